"""The report's document model, rendered as markdown and as one self-contained HTML file.

A document is a list of blocks: ``("h1" | "h2" | "h3" | "p", text)``, ``("ul", [text, ...])``, ``("code", text)``,
``("table", header, rows)`` and ``("img", png_path, alt_text)``. Markdown refers to the PNGs by name; HTML embeds
them as base64 data URIs, with inline CSS and a script that puts the number of decoded images in the title.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

Block = tuple  # see the module docstring


def _md_text(s: Any) -> str:
    """Escape the characters that would turn plain text into markdown/HTML markup."""
    s = str(s).replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")
    return s.replace("<", "&lt;").replace(">", "&gt;")


def _md_escape(s: Any) -> str:
    """Table cell: plain-text escape plus pipes and newlines."""
    return _md_text(s).replace("|", "\\|").replace("\n", " ")


def render_md(blocks: list[Block]) -> str:
    """report.md: the figures are referred to by file name (they lie beside it)."""
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {_md_text(b[1])}\n")
        elif kind == "h2":
            out.append(f"## {_md_text(b[1])}\n")
        elif kind == "h3":
            out.append(f"### {_md_text(b[1])}\n")
        elif kind == "p":
            out.append(f"{_md_text(b[1])}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {_md_text(x)}" for x in b[1]) + "\n")
        elif kind == "code":
            out.append("```\n" + b[1].rstrip() + "\n```\n")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            for r in rows:
                out.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
            out.append("")
        elif kind == "img":
            path, alt = b[1], b[2]
            out.append(f"![{_md_escape(alt).replace('[', '(').replace(']', ')')}]({path.name})\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
"""

_IMG_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  }
  document.title = 'images-ok:' + ok + '/' + imgs.length;
});
"""


def render_html(blocks: list[Block], title: str) -> str:
    """report.html: one file, the figures embedded."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>",
           f"<script>{_IMG_CHECK_JS}</script>", "</head>", "<body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "code":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head)
                       + "</tr></thead><tbody>")
            for r in rows:
                out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
            out.append("</tbody></table>")
        elif kind == "img":
            path, alt = b[1], b[2]
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(alt)}">'
                       f"<figcaption>{e(alt)}</figcaption></figure>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)

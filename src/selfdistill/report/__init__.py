"""Markdown + self-contained HTML report of a continual-learning run.

``write_report(out_dir, results)`` takes the results (schema: :mod:`.schema`) and writes into ``out_dir``:
``report.md`` (references the PNGs by relative name), ``report.html`` (one file, PNGs embedded as base64 data
URIs, inline CSS), ``fig_*.png`` and the CSV tables of :func:`selfdistill.metrics.write_tables`
(``summary.csv``, ``matrix_<method>_seed<seed>.csv``). Results with a ``partial`` entry are marked PARTIAL,
naming what is missing; results without runs get a report that says only that.

Where the results come from (results.json, or a stopped run's plan and progress files) is the run folder's
business: :func:`selfdistill.runs.store.report_folder` reads them and calls :func:`write_report`.

Modules: :mod:`.schema` (results.json as TypedDicts, validation), :mod:`.stats` (estimates and tables),
:mod:`.cells` (cell text), :mod:`.plots` (figures), :mod:`.sections` (one function per report section),
:mod:`.render` (markdown and HTML).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .. import metrics as M
from .render import render_html, render_md
from .schema import RESULTS_FILE, load_results, validate_results
from .sections import build_blocks, empty_blocks, report_title

__all__ = ["RESULTS_FILE", "load_results", "validate_results", "write_report"]


def write_report(out_dir: str | os.PathLike, results: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` + ``report.html`` (+ PNGs and CSVs, when there are runs) into ``out_dir``.

    Returns ``(md_path, html_path)``.
    """
    out = Path(out_dir)
    if results["runs"]:
        M.write_tables(out, results)
        blocks = build_blocks(results, out)
    else:
        blocks = empty_blocks(results)
    md_path = out / "report.md"
    html_path = out / "report.html"
    md_path.write_text(render_md(blocks), encoding="utf-8")
    html_path.write_text(render_html(blocks, report_title(results)), encoding="utf-8")
    return md_path, html_path

"""Accuracy by distance in the report: per-phrasing estimates from the item tables, each method's best rate, the
SDFT − SFT difference paired by seed, the report's opening, and its figure rendering in Chromium."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from selfdistill.report import distance as D
from selfdistill.report import load_results, write_report
from selfdistill.report.stats import by_method

CHROMIUM = "/usr/bin/chromium"
PHRASINGS = ["train", "reworded", "restructured", "other_name", "used", "reverse"]
DIST = [1, 2, 3, 4, 5, 5]
N = 8  # items per phrasing
# final accuracy per phrasing and final retention, per method spec; seed s adds s/8 to the first phrasing
PLAN = {"sdft@lr=3e-4": ([0.75, 0.625, 0.5, 0.25, 0.125, 0.0], 0.62),
        "sdft@lr=1e-3": ([1.0, 1.0, 0.75, 0.5, 0.25, 0.125], 0.40),   # loses too much retention: not "best"
        "sft@lr=1e-5": ([0.5, 0.25, 0.25, 0.0, 0.0, 0.0], 0.63),
        "sft@lr=1e-4": ([1.0, 1.0, 0.0, 0.0, 0.0, 0.0], 0.55)}
BASE_RET = 0.64


def _outcomes(accs: list[float], shift: float = 0.0) -> list[int]:
    out = []
    for k, a in enumerate(accs):
        a = min(1.0, a + (shift if k == 0 else 0.0))
        out += [1] * round(a * N) + [0] * (N - round(a * N))
    return out


def _table(accs: list[float], shift: float) -> dict:
    fields = {"phrasing": [p for p in PHRASINGS for _ in range(N)], "distance": [d for d in DIST for _ in range(N)],
              "fact_set": [("currency", "script")[i % 2] for _ in PHRASINGS for i in range(N)]}
    final = _outcomes(accs, shift)
    return {"ids": [f"i{k}" for k in range(len(final))], "fields": fields,
            "outcomes": {"correct": [[0] * len(final), final],
                         "attempted": [[0] * len(final), [1] * len(final)]}}


def _results() -> dict:
    runs = []
    for spec, (accs, ret) in PLAN.items():
        for seed in (0, 1, 2):
            tab = _table(accs, seed / N)
            acc = float(np.mean(tab["outcomes"]["correct"][-1]))
            runs.append({"method": spec, "seed": seed, "matrix": [[0.0], [acc]], "matrix_n": [[48], [48]],
                         "retention": [BASE_RET, ret + 0.01 * seed], "retention_n": 120,
                         "item_tables": {D.TRAINED: tab, D.CONTROL: _table([0.0] * 6, 0.0)}})
    return {"title": "battery test", "model": "tiny", "machine": "test", "tasks": ["battery"], "runs": runs}


def test_phrasing_estimates_come_from_the_item_tables():
    res = _results()
    groups = by_method(res)
    assert D.phrasings(res) == PHRASINGS
    s = D.by_phrasing(groups["sft@lr=1e-4"][0])
    assert s["train"].accuracy == 1.0 and s["restructured"].accuracy == 0.0 and s["reverse"].n == N
    assert s["train"].attempted == 1.0
    mean, lo, hi, kind = D.phrasing_estimate(groups["sdft@lr=3e-4"], "train")
    assert mean == pytest.approx(np.mean([0.75, 0.875, 1.0])) and kind == "t" and lo < mean < hi
    assert D.phrasing_estimate(groups["sdft@lr=3e-4"], "train", stage=0)[0] == 0.0


def test_best_rate_keeps_retention_and_the_difference_is_paired_by_seed():
    res = _results()
    groups = by_method(res)
    assert D.best_specs(res, groups) == {"sdft": "sdft@lr=3e-4", "sft": "sft@lr=1e-5"}
    d = D.paired_difference(groups["sdft@lr=3e-4"], groups["sft@lr=1e-5"], "restructured")
    assert d["mean"] == pytest.approx(0.25) and d["n"] == 3 and d["sd"] == 0
    v = D.verdicts(res, groups)
    assert "3 other structure" in v["level"]  # +0.25 at every seed: a zero-width interval is no evidence
    assert "1 training question" in v["level"] and "5 reverse" in v["level"]
    # equal retention (drop <= 0.10: floor 0.54): SFT may use lr 1e-4 (0.55) there, SDFT not 1e-3 (0.40)
    eq = D.equal_retention_difference(res, "sdft", "sft", "reworded", 0.10)
    assert eq["mean"] == pytest.approx(0.625 - 1.0) and eq["n"] == 3


def test_report_leads_with_the_answer_and_tables_follow(tmp_path):
    md, _ = write_report(tmp_path, _results())
    text = md.read_text()
    lead = text.index("## What this run shows")
    assert lead < text.index("| field | value |")  # before the metadata table
    assert text.index("![Accuracy by distance") < text.index("## Summary per method")
    assert "retention): sdft@lr=3e-4 (3 seeds), sft@lr=1e-5 (3 seeds)." in text
    assert "## Accuracy by distance from the training question" in text
    assert "| 3 other structure | +0.250 [0.250, 0.250] (n=3)" in text
    assert (tmp_path / "fig_distance.png").stat().st_size > 10_000


def test_results_without_distances_lead_with_the_trade_off(tmp_path):
    res = _results()
    for r in res["runs"]:
        del r["item_tables"]
    text = write_report(tmp_path, res)[0].read_text()
    head = text[:text.index("| field | value |")]
    assert "## What this run shows" in head and "new-task accuracy" in head and "Pareto frontiers" in head
    assert "Accuracy by distance" not in text


_CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_distance_plot_and_table_render_in_chromium(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    _, html = write_report(tmp_path, load_results(tmp_path))
    page = html.read_text().replace("<title>", "<title>__", 1)
    check = ("<script>window.addEventListener('load',()=>{const i=[...document.images];document.title="
             "'decoded:'+i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script></body>")
    html.write_text(page.replace("</body>", check))
    dom = subprocess.run([CHROMIUM, *_CHROME_FLAGS, f"--user-data-dir={tmp_path / 'p'}", "--virtual-time-budget=5000",
                          "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r"decoded:(\d+)/(\d+)", dom.stdout)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 2, dom.stdout[:500]
    assert 'alt="Accuracy by distance from the training question' in dom.stdout
    table = dom.stdout[dom.stdout.index("Accuracy by distance from the training question</h2>"):]
    assert re.search(r"<th>3 other structure</th>", table) and "sdft@lr=3e-4" in table

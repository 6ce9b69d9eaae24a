"""Report on a synthetic results.json: files, decodable PNGs, self-contained HTML,
and a real headless-Chromium render check."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from selfdistill import metrics as M
from selfdistill.report import RESULTS_FILE, load_results, validate_results, write_report
from selfdistill.report.stats import comparison_pairs, prop_estimate

CHROMIUM = "/usr/bin/chromium"


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with matplotlib
        import matplotlib.image as mpimg

        return np.asarray(mpimg.imread(io.BytesIO(data), format="png"))
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _run(method: str, seed: int, rng: np.random.Generator, tasks: int = 2) -> dict:
    base = [0.30, 0.20, 0.25][:tasks]
    keep = {"sdft": 0.95, "sft": 0.75, "dft": 0.85}[method]
    rows = [base]
    for s in range(tasks):
        prev = rows[-1]
        row = [min(1.0, max(0.0, v * keep + rng.normal(0, 0.01))) for v in prev]
        row[s] = 0.75 + rng.normal(0, 0.02)
        rows.append(row)
    ret0 = 0.62
    retention = [ret0] + [ret0 * keep ** (s + 1) + rng.normal(0, 0.005) for s in range(tasks)]
    curves, checkpoints = [], []
    for s in range(1, tasks + 1):
        for step in range(0, 50, 5):  # steps restart at every stage
            curves.append({"stage": s, "step": step, "loss": 2.0 * np.exp(-step / 20) + 0.1,
                           "lr": 1e-5})
        for step in range(0, 50, 10):
            frac = step / 40
            checkpoints.append({"stage": s, "step": step,
                                "new_task_acc": base[s - 1] + frac * (rows[s][s - 1] - base[s - 1]),
                                "retention": retention[s - 1]
                                + frac * (retention[s] - retention[s - 1])})
    return {"method": method, "seed": seed, "matrix": rows,
            "matrix_n": [[200] * tasks for _ in rows], "retention": retention,
            "retention_n": 500, "drift": [0.0] + [0.01 * (s + 1) / keep for s in range(tasks)],
            "curves": curves, "checkpoints": checkpoints}


def _md_table(text: str, head_start: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and body rows of the first markdown table whose header line starts with head_start."""
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith(head_start))

    def cells(ln: str) -> list[str]:
        return [c.strip() for c in ln.strip().strip("|").split(" | ")]
    rows = []
    for ln in lines[k + 2:]:
        if not ln.startswith("| "):
            break
        rows.append(cells(ln))
    return cells(lines[k]), rows


def _results(tasks: int = 2, seeds: dict | None = None) -> dict:
    rng = np.random.default_rng(0)
    seeds = seeds or {"sdft": [0, 1, 2], "sft": [0, 1], "dft": [0]}
    names = ["science_qa", "tool_use", "medical"][:tasks]
    return {
        "title": "Synthetic <test> report",
        "model": "tiny-test-model",
        "machine": "CPU (test)",
        "date": "2026-01-01",
        "config": {"lr": 1e-5, "epochs": 1, "methods": list(seeds)},
        "tasks": names,
        "retention_name": "retention (avg of held-out benchmarks)",
        "runs": [_run(m, s, rng, tasks) for m, ss in seeds.items() for s in ss],
        "probe": {"student_acc": 0.41, "teacher_acc": 0.78, "n": 100, "kl_teacher_student": 0.0123},
        "notes": ["synthetic data for tests | with a pipe"],
    }


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    (d / "results.json").write_text(json.dumps(_results()))
    write_report(d, load_results(d))
    return d


def test_files_exist_and_pngs_decode(report_dir):
    md, html = report_dir / "report.md", report_dir / "report.html"
    assert md.is_file() and html.is_file()
    pngs = sorted(report_dir.glob("fig_*.png"))
    assert {p.name for p in pngs} == {"fig_accuracy_per_task.png", "fig_retention.png",
                                      "fig_tradeoff.png", "fig_training_curves.png",
                                      "fig_drift.png", "fig_frontier.png"}
    for p in pngs:
        img = _decode_png(p.read_bytes())
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(img.astype(float).std()) > 1e-3, f"{p.name} looks blank"
    assert (report_dir / "summary.csv").is_file()
    assert (report_dir / "matrix_sdft_seed2.csv").is_file()


def test_markdown_content(report_dir):
    md = (report_dir / "report.md").read_text()
    for p in report_dir.glob("fig_*.png"):
        assert f"]({p.name})" in md
    assert "tiny-test-model" in md and "CPU (test)" in md and "2026-01-01" in md
    assert "sdft: 3 seeds (0, 1, 2)" in md and "dft: 1 seed (0)" in md
    assert "Probe" in md and "0.410 [" in md and "0.780 [" in md
    assert "mean per-token KL(teacher ‖ student) on the student's rollouts: 0.0123" in md
    assert "BWT" in md and "forgetting on science_qa" in md
    assert "Retention at equal new-task accuracy" in md and "A=sdft, B=sft" in md
    assert "- synthetic data for tests | with a pipe" in md
    assert md.startswith("# Synthetic &lt;test&gt; report")  # no raw HTML leaks into markdown
    # the shared base model is identical across seeds: Wilson, not a zero-width t-interval
    assert "| base | 0.300 [0.241, 0.367]ᵂ |" in md
    # single-seed method gets a Wilson interval (marked) and no t-interval for BWT
    dft_row = [ln for ln in md.splitlines() if ln.startswith("| dft | 1 |")][0]
    assert "ᵂ" in dft_row
    assert "Caution: at least one method has a single seed" in md


def test_html_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    pngs = sorted(report_dir.glob("fig_*.png"))
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == len(pngs) == html.count("<img ")
    embedded = {base64.b64decode(u) for u in uris}
    assert embedded == {p.read_bytes() for p in pngs}
    for data in embedded:
        _decode_png(data)
    # nothing external: no http(s) links, no file references to the PNGs
    assert "http://" not in html and "https://" not in html
    assert 'src="fig_' not in html and "<link" not in html
    assert "&lt;test&gt;" in html  # title escaped
    assert "images-ok:" in html  # the in-page decode check script


def test_single_task_single_seed(tmp_path):
    res = _results(tasks=1, seeds={"sdft": [0], "sft": [0]})
    del res["probe"]
    for r in res["runs"]:
        del r["curves"], r["drift"]
    (tmp_path / "results.json").write_text(json.dumps(res))
    md, html = write_report(tmp_path, load_results(tmp_path))
    text = md.read_text()
    assert "Probe" not in text
    assert not (tmp_path / "fig_training_curves.png").exists()
    assert not (tmp_path / "fig_drift.png").exists()
    assert (tmp_path / "fig_tradeoff.png").is_file()
    # BWT is undefined for one task: n/a in the BWT column of the summary and of the per-run table
    for head_start in ("| method | seeds |", "| method | seed |"):
        head, rows = _md_table(text, head_start)
        assert [r[0] for r in rows] == ["sdft", "sft"]
        assert [r[head.index("BWT")] for r in rows] == ["n/a", "n/a"], (head, rows)
    assert (tmp_path / "fig_frontier.png").is_file()
    assert html.read_text().count("<img ") == 4


def test_minimal_results(tmp_path):
    res = {"tasks": ["t"], "runs": [{"method": "sft", "seed": 0, "matrix": [[0.1], [0.6]]}]}
    (tmp_path / "results.json").write_text(json.dumps(res))
    md, html = write_report(tmp_path, load_results(tmp_path))
    assert md.is_file() and html.read_text().count("<img ") == 1


def test_validation_errors(tmp_path):
    assert validate_results(_results()) == []
    bad = _results()
    bad["runs"][0]["matrix"] = bad["runs"][0]["matrix"][:1]
    bad["runs"][1]["retention"] = [0.5]
    bad["runs"][2]["matrix_n"] = [[1]]
    probs = validate_results(bad)
    assert len(probs) == 3, probs
    (tmp_path / "results.json").write_text(json.dumps({"tasks": [], "runs": []}))
    with pytest.raises(ValueError, match="invalid results"):
        load_results(tmp_path)


def test_write_report_takes_the_results_and_reads_nothing(tmp_path):
    res = _results(seeds={"sft": [0]})
    md, html = write_report(tmp_path, res)  # no results.json in the folder: the dict is all it uses
    assert (md, html) == (tmp_path / "report.md", tmp_path / "report.html")
    assert not (tmp_path / RESULTS_FILE).exists()
    assert md.read_text().startswith("# Synthetic &lt;test&gt; report")
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "matrix_sft_seed0.csv").is_file()


def test_partial_results_are_marked_and_no_runs_get_a_plan_only_report(tmp_path):
    part = {"missing": ["sft seed 0: not started"], "n_planned": 2, "n_reported": 1}
    text = write_report(tmp_path, {**_results(seeds={"sdft": [0]}), "partial": part})[0].read_text()
    assert "## PARTIAL REPORT" in text and "1 of 2 planned runs" in text and "- sft seed 0: not started" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    md, html = write_report(empty, {"title": "t", "tasks": ["a"], "runs": [], "partial": {**part, "n_reported": 0}})
    assert "No run has finished a stage yet" in md.read_text() and "0 of 2 planned runs" in md.read_text()
    assert "<title>t</title>" in html.read_text()
    assert not list(empty.glob("*.png")) and not list(empty.glob("*.csv"))


# --------------------------------------------------------------------------- #
# Real browser: every <img> must decode in headless Chromium.
# --------------------------------------------------------------------------- #

_CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} not installed (apt-get install chromium); "
                           "the browser render check needs it")
def test_chromium_renders_all_images(report_dir, tmp_path):
    html = report_dir / "report.html"
    n_imgs = html.read_text().count("<img ")
    url = html.resolve().as_uri()

    dom = subprocess.run(
        [CHROMIUM, *_CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile1'}",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r"<title>images-ok:(\d+)/(\d+)</title>", dom.stdout)
    assert m, f"decode-check title not found; stderr: {dom.stderr[-1000:]}"
    assert int(m.group(2)) == n_imgs and n_imgs == 6
    assert 'alt="Pareto frontiers of new-task accuracy' in dom.stdout  # the frontier plot is on the page
    assert int(m.group(1)) == n_imgs, f"only {m.group(1)}/{n_imgs} images decoded"

    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, *_CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
         f"--screenshot={shot}", "--window-size=1200,3000", "--virtual-time-budget=5000", url],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = _decode_png(shot.read_bytes())
    assert img.shape[:2] == (3000, 1200)
    flat = img.reshape(-1, img.shape[-1]).astype(float)
    assert flat.std() > 5, "screenshot looks blank"
    assert (flat.min(axis=1) < 128).mean() > 0.005, "screenshot has almost no dark pixels"


def test_also_evaluated_table(tmp_path):
    res = _results(tasks=1, seeds={"sdft": [0], "sft": [0]})
    res["runs"][0]["also"] = {"train phrasing": {"accuracy": [0.0, 0.5], "n": 32}}
    res["runs"][1]["also"] = {"train phrasing": {"accuracy": [0.0, 1.0], "n": 32}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    md, _ = write_report(tmp_path, load_results(tmp_path))
    text = md.read_text()
    section = text.split("## Also evaluated (never trained on)")[1].split("\n## ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| model | train phrasing")
    base, sdft, sft = rows[-3:]
    assert base.startswith("| base | 0.000") and sdft.startswith("| sdft | 0.500") and sft.startswith("| sft | 1.000")
    assert "[0.336, 0.664]" in sdft  # Wilson 95% of 16/32: 0.5 ± 1.96·sqrt(1/128 + 1.96²/4096) / (1 + 1.96²/32)


def test_accuracy_t_interval_over_seeds_is_clipped_to_unit_range():
    vals = [0.094, 0.188, 0.406]  # three seeds whose raw t-interval dips below 0
    raw = M.aggregate_seeds(vals)
    assert raw["low"] < 0
    mean, lo, hi, kind = prop_estimate(vals, [32, 32, 32])
    assert kind == "t" and mean == pytest.approx(raw["mean"]) and lo == 0.0 and hi == pytest.approx(raw["high"])
    mean, lo, hi, _ = prop_estimate([1.0, 0.9, 0.6], [32, 32, 32])
    assert hi == 1.0 and lo == pytest.approx(M.aggregate_seeds([1.0, 0.9, 0.6])["low"])


def test_frontier_table_reads_per_seed_frontiers_of_every_learning_rate(tmp_path):
    rng = np.random.default_rng(5)
    runs = []
    for method, keep in (("sdft", 0.95), ("sft", 0.8)):
        for lr in ("1e-4", "3e-4"):
            for seed in (0, 1):
                r = _run(method, seed, rng, tasks=1)
                r["method"] = f"{method}@lr={lr}"
                runs.append(r)
    res = {**_results(tasks=1), "runs": runs}
    (tmp_path / "results.json").write_text(json.dumps(res))
    write_report(tmp_path, load_results(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert (tmp_path / "fig_frontier.png").is_file() and "Pareto frontiers" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1 | A=sdft, B=sft |")]
    assert len(rows) == 5
    # the first level's A - B, computed here from the definition: per seed, the best retention among the base
    # point and every checkpoint/end point of both learning rates with accuracy >= the level
    base = (runs[0]["matrix"][0][0], runs[0]["retention"][0])

    def pts(method, seed):
        out = [base]
        for r in runs:
            if r["method"].startswith(method + "@") and r["seed"] == seed:
                out += [(c["new_task_acc"], c["retention"]) for c in r["checkpoints"]]
                out.append((r["matrix"][1][0], r["retention"][1]))
        return out
    lv = base[0]
    diffs = [max(y for x, y in pts("sdft", k) if x >= lv) - max(y for x, y in pts("sft", k) if x >= lv)
             for k in (0, 1)]
    want = M.aggregate_seeds(diffs)
    assert rows[0].split(" | ")[5].startswith(f"{want['mean']:+.3f} [{want['low']:.3f}, {want['high']:.3f}]")


def test_frontier_comparisons_pair_families_with_the_same_settings_each_over_its_own_range(tmp_path):
    assert comparison_pairs(["sdft", "sft", "sdft@model.lora=true", "sft@model.lora=true", "dft@model.lora=true"]) \
        == [("sdft", "sft"), ("sdft@model.lora=true", "sft@model.lora=true"),
            ("sdft@model.lora=true", "dft@model.lora=true")]
    assert comparison_pairs(["sdft", "sft@model.lora=true"]) == [("sdft", "sft@model.lora=true")]
    assert comparison_pairs(["sft", "dft"]) == [("sft", "dft")]
    rng = np.random.default_rng(7)
    runs = []
    for method in ("sdft", "sft"):
        for lora, reach in ((False, 1.0), (True, 0.5)):  # the LoRA runs reach half the accuracy gain
            for seed in (0, 1):
                r = _run(method, seed, rng, tasks=1)
                r["method"] = f"{method}@lr=1e-3" + (",model.lora=true" if lora else "")
                base = r["matrix"][0][0]
                r["matrix"][1][0] = base + reach * (r["matrix"][1][0] - base)
                for c in r["checkpoints"]:
                    c["new_task_acc"] = base + reach * (c["new_task_acc"] - base)
                runs.append(r)
    (tmp_path / "results.json").write_text(json.dumps({**_results(tasks=1), "runs": runs}))
    write_report(tmp_path, load_results(tmp_path))
    text = (tmp_path / "report.md").read_text()
    full = [ln.split(" | ") for ln in text.splitlines() if ln.startswith("| 1 | A=sdft, B=sft |")]
    lora = [ln.split(" | ") for ln in text.splitlines()
            if ln.startswith("| 1 | A=sdft@model.lora=true, B=sft@model.lora=true |")]
    assert len(full) == len(lora) == 5 and "A=sdft, B=sdft@model.lora=true" not in text

    def top(prefix):  # the highest accuracy a family reached, over seeds: the pair's range ends at the lower one
        return max(max([r["matrix"][1][0]] + [c["new_task_acc"] for c in r["checkpoints"]])
                   for r in runs if r["method"].startswith(prefix[0] + "@") and
                   ("model.lora" in r["method"]) == prefix[1])
    assert float(full[-1][2]) == pytest.approx(min(top(("sdft", False)), top(("sft", False))), abs=5e-4)
    assert float(lora[-1][2]) == pytest.approx(min(top(("sdft", True)), top(("sft", True))), abs=5e-4)

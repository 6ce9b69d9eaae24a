"""`selfdistill train` end to end on a local tiny model: the preset line, the run, and the same folder refused."""

from __future__ import annotations

from helpers import write_records
from selfdistill.cli import main


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_train_end_to_end_on_a_local_tiny_model(capsys, tmp_path, tiny_tok, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tok.save_pretrained(tmp_path / "m")
    p = tmp_path / "d.jsonl"
    write_records(p, [{"prompt": f"What is {i}+1?", "demonstration": f"{i + 1}"} for i in range(4)])
    argv = ["train", "--method", "sdft", "--model", str(tmp_path / "m"), "--data", str(p), "--output",
            str(tmp_path / "o"), "--max-steps", "2", "--train.prompts_per_step", "2", "--train.micro_batch_size", "2",
            "--rollout.max_new_tokens", "4", "--log.progress", "false"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# preset: cpu, because no GPU was found") and "divergence: forward_kl" in out
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 2
    rc, line = _err(capsys, argv)  # the same output folder again: refused
    assert rc == 2 and "--overwrite" in line

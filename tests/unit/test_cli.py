"""The command line: every user error is one clear line (exit code 2), `env`, the preset choice (the end-to-end
train run: tests/integration/test_cli_train.py)."""

from __future__ import annotations

import pytest

import selfdistill.cli.train as cli_train
from selfdistill.cli import main


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_unknown_task_name_suggests(capsys, tmp_path):
    rc, line = _err(capsys, ["train", "--data", "task:knowlege", "--output", str(tmp_path / "o")])
    assert rc == 2 and "did you mean 'knowledge'" in line.lower()


def test_unknown_config_key_suggests(capsys, tmp_path):
    rc, line = _err(capsys, ["train", "--data", "task:knowledge", "--output", str(tmp_path / "o"),
                             "--loss.divergense", "reverse_kl"])
    assert rc == 2 and "did you mean 'loss.divergence'" in line


def test_out_of_range_value(capsys, tmp_path):
    rc, line = _err(capsys, ["train", "--data", "task:knowledge", "--output", str(tmp_path / "o"),
                             "--teacher.ema_rate", "2"])
    assert rc == 2 and "teacher.ema_rate must be in (0, 1]" in line


def test_bad_data_file_names_file_and_record(capsys, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "Q", "demonstration": "A"}\n{"prompt": "Q"}\n')
    rc, line = _err(capsys, ["train", "--data", str(p), "--output", str(tmp_path / "o")])
    assert rc == 2 and str(p) in line and "record 2" in line and "'demonstration'" in line


def test_missing_model_path(capsys, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "Q", "demonstration": "A"}\n')
    rc, line = _err(capsys, ["train", "--data", str(p), "--output", str(tmp_path / "o"),
                             "--model", str(tmp_path / "no-model")])
    assert rc == 2 and "does not exist" in line


def test_env_prints_versions(capsys):
    from importlib.metadata import PackageNotFoundError, version
    from selfdistill.cli.env import ENV_PACKAGES
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for k in ("torch", "transformers", "device", "cache dir", "default model GGUF"):
        assert k in out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.split(None, 1)[0] in ENV_PACKAGES)
    for dist in ENV_PACKAGES:  # every row agrees with the installed metadata (gguf has no __version__)
        try:
            want = version(dist)
        except PackageNotFoundError:
            want = "not installed"
        assert rows[dist].strip() == want, dist
    assert rows["gguf"].strip() != "not installed"


def test_train_preset_follows_the_device_unless_named(monkeypatch, tmp_path):
    import torch
    from selfdistill.cli.train import resolve_preset
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_preset(None, None, {})[0] == "cpu"
    assert resolve_preset("paper", None, {}) == ("paper", "# preset: paper (as asked)")
    assert resolve_preset(None, None, {"preset": "paper"})[0] == "paper"
    (tmp_path / "c.yaml").write_text("preset: paper\n")
    assert resolve_preset(None, str(tmp_path / "c.yaml"), {})[0] == "paper"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_preset(None, None, {})[0] == "paper"


def test_a_bad_multi_process_setting_fails_in_one_line_before_any_worker_starts(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_train, "relaunch", lambda n, env: pytest.fail("a worker was started"))
    rc = main(["train", "--num-processes", "2", "--dist", "fsdp", "--teacher.kind", "live", "--data",
               "task:knowledge", "--output", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "teacher.kind=live with dist.strategy=fsdp is not supported" in err
    assert "resolved config" not in out
    rc = main(["train", "--num-processes", "3", "--data", "task:knowledge", "--output", str(tmp_path / "o"),
               "--train.prompts_per_step", "8"])
    assert rc == 2 and "multiple of processes x micro_batch_size = 3 x" in capsys.readouterr().err


class _Stop(Exception):
    pass


def test_the_config_is_printed_by_the_launcher_only(capsys, tmp_path, monkeypatch):
    seen = {}

    def relaunch(n, env):
        seen["n"] = n
        return 0
    monkeypatch.setattr(cli_train, "relaunch", relaunch)
    argv = ["train", "--num-processes", "2", "--data", "task:knowledge", "--output", str(tmp_path / "o")]
    assert main(argv) == 0 and seen == {"n": 2}
    assert capsys.readouterr().out.count("# resolved config") == 1
    monkeypatch.setenv("LOCAL_RANK", "0")  # a worker the launcher started: rank 0 and 1 print nothing
    monkeypatch.setenv(cli_train.CONFIG_SHOWN, "1")

    def stop(*a, **kw):
        raise _Stop()
    monkeypatch.setattr(cli_train, "load_model", stop)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(_Stop):
            main(argv)
        assert "resolved config" not in capsys.readouterr().out

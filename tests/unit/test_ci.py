""".ci/check_skips: a skipped test fails CI unless its reason is a missing GPU; the lock file lies in the declared
dependency ranges."""

from __future__ import annotations

import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import ROOT

CHECK = ROOT / ".ci" / "check_skips"


@pytest.mark.parametrize("summary, ok", [
    ("1 passed in 0.1s", True),
    ("SKIPPED [1] tests/test_x.py:12: needs a CUDA GPU (torch.cuda.is_available() is False)", True),
    ("SKIPPED [2] tests/test_x.py:30: no GPU: the vLLM engine needs one", True),
    ("SKIPPED [1] tests/test_tasks.py:259: paper data not found", False),
    ("SKIPPED [1] tests/test_x.py:3: could not import 'lm_eval': No module named 'lm_eval'", False),
])
def test_ci_fails_on_a_skip_that_is_not_a_missing_gpu(tmp_path, summary, ok):
    log = tmp_path / "log"
    log.write_text("=========================== short test summary info ============================\n"
                   f"{summary}\n")
    r = subprocess.run(["bash", str(CHECK), str(log)], capture_output=True, text=True)
    assert (r.returncode == 0) == ok, r.stderr
    if not ok:
        assert summary in r.stderr


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_satisfies_the_declared_ranges_and_they_name_the_same_packages():
    declared = {canonicalize_name(r.name): r for r in map(Requirement,
                                                            tomllib.loads((ROOT / "pyproject.toml").read_text())
                                                            ["project"]["dependencies"])}
    lock = _lock()
    assert set(declared) == set(lock)
    for name, req in declared.items():
        assert req.specifier and "==" not in str(req.specifier), f"{name}: a range, not a pin ({req})"
        assert req.specifier.contains(lock[name]), f"requirements.txt {name}=={lock[name]} is outside {req}"

"""The launcher's stderr filter: torchrun's failure report and log lines are dropped, everything else passes
through as it arrives, and a failed run ends in one line naming the rank and the reason."""

from __future__ import annotations

import io

from selfdistill.cli.launch import StderrFilter

TORCHRUN_FAILURE = """\
W1201 05:12:01.123000 1234 torch/distributed/run.py:803] *****************************************
W1201 05:12:01.123000 1234 torch/distributed/run.py:803] Setting OMP_NUM_THREADS environment variable for each \
process to be 1 in default, to avoid your system being overloaded.
E1201 05:12:09.000000 1234 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 2) local_rank: \
0 (pid: 5) of binary: /usr/bin/python3
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 1226, in <module>
    main()
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 357
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
selfdistill FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_05:12:09
  host      : host
  rank      : 1 (local_rank: 1)
  exitcode  : 2 (pid: 6)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_05:12:09
  host      : host
  rank      : 0 (local_rank: 0)
  exitcode  : 2 (pid: 5)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def _run(chunks: list[str]) -> tuple[StderrFilter, str]:
    out = io.StringIO()
    f = StderrFilter(out)
    for c in chunks:
        f.feed(c)
    f.finish()
    return f, out.getvalue()


def test_torchrun_report_dropped_worker_errors_held_one_line_summary():
    worker = ("sdft:  10%|#         | 1/10\rsdft:  20%|##        | 2/10\r"
              "selfdistill train: error (rank 1): no such model: /nope\n"
              "selfdistill train: error (rank 0): no such model: /nope\n")
    f, out = _run([worker, TORCHRUN_FAILURE])
    assert out == "sdft:  10%|#         | 1/10\rsdft:  20%|##        | 2/10\r"  # the progress bar passed through
    assert f.summary() == "selfdistill train: error (rank 1): no such model: /nope"
    assert (f.rank, f.exitcode) == ("0", "2")  # torchrun's root cause


def test_a_crash_without_an_error_line_names_the_rank_and_exit_code_and_keeps_the_workers_traceback():
    crash = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nZeroDivisionError: division by zero\n"
    text = crash + TORCHRUN_FAILURE
    for cut in (1, 7, 50, len(text)):  # however the pipe splits it
        f, out = _run([text[i:i + cut] for i in range(0, len(text), cut)])
        assert out == crash
        assert f.summary().startswith("selfdistill train: error: rank 0 failed with exit code 2")


def test_plain_output_passes_through_unchanged():
    text = "[selfdistill] FSDP2: student sharded over 2 process(es)\nstep 1 loss 0.5\n"
    f, out = _run([text[:10], text[10:]])
    assert out == text and not f.errors

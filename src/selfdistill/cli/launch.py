"""`selfdistill train --num-processes N`: relaunch under accelerate (torchrun), and keep the console readable.

A failed worker makes torchrun print a traceback of its own agent and a 15-line `ChildFailedError` report, and
every worker that hit the same bad setting prints the same error. The launcher reads the workers' and torchrun's
stderr and passes it through unchanged (progress bars included) except for: torchrun's failure traceback and
report and its log lines, which are dropped, and the workers' one-line errors (`selfdistill train: error: ...`),
which are held back. When the run fails it prints one line: the first worker error, naming its rank, or, when no
worker printed one (a crash), the rank and exit code torchrun reported.
"""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

WORKER_ERROR = re.compile(r"^selfdistill \w+: error")
TORCHRUN_LOG = re.compile(r"^[EWI]\d{4} [\d:.]+ \d+ .*(torch/distributed|accelerate)")
FAILURE_END = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"


@dataclass
class StderrFilter:
    """Feed it text as it arrives (`feed`), then `finish`; `out` receives what passes through."""
    out: object
    errors: list[str] = field(default_factory=list)  # workers' one-line errors, in order
    rank: str | None = None  # the failed rank and exit code from torchrun's report
    exitcode: str | None = None
    _pending: str = ""
    _held: list[str] = field(default_factory=list)  # a traceback being read: dropped if it is torchrun's
    _in_report: bool = False
    _root: bool = False

    def feed(self, text: str) -> None:
        parts = re.split(r"(?<=[\r\n])", self._pending + text)
        self._pending = parts.pop() if parts and not parts[-1].endswith(("\r", "\n")) else ""
        for seg in parts:
            self._segment(seg)

    def finish(self) -> None:
        if self._pending:
            self._segment(self._pending)
        self._flush_held()

    def _segment(self, seg: str) -> None:
        line = seg.rstrip("\r\n")
        if self._in_report:
            self._read_report(line)
        elif self._held:
            self._held.append(seg)
            if line and not line.startswith((" ", "\t", "Traceback")):  # the exception line ends a traceback
                if line.startswith(FAILURE_END):
                    self._held, self._in_report = [], True
                else:
                    self._flush_held()
        elif line.startswith("Traceback (most recent call last)"):
            self._held.append(seg)
        elif WORKER_ERROR.match(line):
            self.errors.append(line)
        elif not TORCHRUN_LOG.match(line):
            self.out.write(seg)
            self.out.flush()

    def _read_report(self, line: str) -> None:
        key, _, value = line.strip().partition(":")
        key = key.strip()
        if line.startswith("Root Cause"):  # the first failure: its rank and exit code win over the others'
            self.rank, self.exitcode, self._root = None, None, True
        elif key == "rank" and self.rank is None:
            self.rank = value.split()[0]
        elif key == "exitcode" and self.exitcode is None:
            self.exitcode = value.split()[0]
        elif line.startswith("=") and self._root and self.rank is not None:  # the report's closing rule
            self._in_report = False

    def _flush_held(self) -> None:
        for seg in self._held:
            self.out.write(seg)
        self._held = []
        self.out.flush()

    def summary(self) -> str:
        if self.errors:
            return self.errors[0]
        where = f"rank {self.rank}" if self.rank is not None else "a worker"
        code = f" with exit code {self.exitcode}" if self.exitcode is not None else ""
        return (f"selfdistill train: error: {where} failed{code} without an error message (its output is above); "
                f"rerun with --num-processes 1 to see it alone")


def relaunch(n: int, config_shown_env: str) -> int:
    """`selfdistill train --num-processes N ...` = `accelerate launch --num_processes N -m selfdistill train ...`,
    its stderr filtered (module docstring). `config_shown_env` is set for the workers: the launcher printed the
    config."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--num-processes":
            skip = True
            continue
        if a.startswith("--num-processes="):
            continue
        argv.append(a)
    # torchrun with n workers; without CUDA they run on CPU over gloo. (`--cpu` would start ONE process.)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "selfdistill", *argv]
    proc = subprocess.Popen(cmd, env={**os.environ, config_shown_env: "1"}, stderr=subprocess.PIPE)
    filt, decode = StderrFilter(sys.stderr), codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        try:
            chunk = os.read(proc.stderr.fileno(), 65536)
        except KeyboardInterrupt:  # Ctrl-C reached the workers too: keep reading while they save their step
            continue
        if not chunk:
            break
        filt.feed(decode.decode(chunk))
    filt.finish()
    rc = _wait(proc)
    if rc:
        print(filt.summary(), file=sys.stderr)
    return rc


def _wait(proc: subprocess.Popen) -> int:
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue

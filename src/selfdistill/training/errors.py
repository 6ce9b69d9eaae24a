"""The training package's one error type: a bad setting or a run that cannot go on, said in one line."""

from __future__ import annotations


class TrainingError(RuntimeError):
    pass

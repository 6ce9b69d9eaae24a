"""One console-table helper for every command that prints results (eval, probe, lm-eval)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A rich table on the console; cells are escaped ("knowledge [reworded]" is text, not rich markup)."""
    t = Table(title=escape(title))
    for h in header:
        t.add_column(h, justify="left" if h in ("task", "metric", "") else "right")
    for r in rows:
        t.add_row(*(escape(c) for c in r))
    Console().print(t)

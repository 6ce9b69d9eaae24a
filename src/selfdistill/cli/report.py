"""`selfdistill report RUN_DIR`: report.md and a self-contained report.html from a run folder."""

from __future__ import annotations

import argparse
import sys

from ..runs import report_folder



def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.md and a self-contained report.html from a run folder "
                       "(a stopped run: the finished part, marked partial)")
    p.add_argument("run_dir")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        md_path, html_path = report_folder(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"selfdistill report: error: {e}", file=sys.stderr)
        return 2
    print(md_path)
    print(html_path)
    return 0

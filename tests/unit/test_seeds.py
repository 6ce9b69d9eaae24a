"""`--seeds` of demo, sequence and sweep: a count or a list, parsed once (cli.common.parse_seeds)."""

from __future__ import annotations

import pytest

from selfdistill.config import ConfigError
from selfdistill.cli.common import parse_seeds


@pytest.mark.parametrize("bad", ["", "a,b", "1,1", "0;1", "0", "-2", "1,-1"])
def test_demo_seeds_rejects_bad_lists(bad):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(bad)
    assert parse_seeds("2, 0") == [2, 0]


def test_one_seeds_syntax_count_or_list():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds(3) == [0, 1, 2] and parse_seeds(None) == [0]
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("7,") == [7]
    from selfdistill.cli import build_parser
    for cmd in (["demo"], ["sequence", "--tasks", "knowledge", "--output", "o"],
                ["sweep", "--tasks", "knowledge", "--lrs", "1e-4", "--output", "o"]):
        args = build_parser().parse_args([*cmd, "--seeds", "3"])
        assert parse_seeds(args.seeds) == [0, 1, 2], cmd
        assert parse_seeds(build_parser().parse_args(cmd).seeds) == [0], cmd

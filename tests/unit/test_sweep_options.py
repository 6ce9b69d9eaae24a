"""The sweep's axes without a run: its method specs and run order, --lrs / --grid values that do not parse, and
a second command on the folder extending the recorded sweep."""

from __future__ import annotations

import json

import pytest

from selfdistill.config import ConfigError
from selfdistill.cli.sweep import parse_grid, parse_lrs
from selfdistill.runs.sweep import SweepAxes, merged_sweep, sweep_order


def test_sweep_specs_and_order():
    specs = [str(s) for s in SweepAxes(["sdft", "sft"], ["1e-4", "3e-4"], {"model.lora": ["true", "false"]}).specs()]
    assert specs[:3] == ["sdft@lr=1e-4,model.lora=true", "sdft@lr=1e-4,model.lora=false",
                         "sft@lr=1e-4,model.lora=true"] and len(specs) == 8
    assert sweep_order(["a", "b"], [0, 1]) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]


@pytest.mark.parametrize("fn,arg,flag", [
    (parse_lrs, "1e-4,abc", "--lrs"), (parse_lrs, "1e-4,-2", "--lrs"), (parse_lrs, "", "--lrs"),
    (parse_grid, ["model.lora=true,maybe"], "--grid"), (parse_grid, ["train.max_steps=ten"], "--grid"),
    (parse_grid, ["lora"], "--grid"), (parse_grid, ["optim.lr=1e-4"], "--grid"),
])
def test_sweep_values_that_do_not_parse_name_the_flag(fn, arg, flag):
    with pytest.raises(ConfigError) as e:
        fn(arg)
    msg = str(e.value)
    assert flag in msg and "\n" not in msg
    assert parse_grid(["model.lora=true,false"]) == {"model.lora": ["true", "false"]}


def test_a_second_command_on_the_folder_extends_the_recorded_sweep(tmp_path):
    first = {"methods": ["sdft", "sft"], "lrs": ["1e-4", "3e-4"], "grid": {}, "seeds": [0, 1]}
    assert merged_sweep(str(tmp_path), first) == first  # nothing recorded yet
    (tmp_path / "results_extra.json").write_text(json.dumps({"config": {}, "sweep": first}))
    lora = {"methods": ["sdft", "sft"], "lrs": ["1e-3", "3e-4"], "grid": {"model.lora": ["true"]}, "seeds": [0, 1]}
    assert merged_sweep(str(tmp_path), lora) == {"methods": ["sdft", "sft"], "lrs": ["1e-4", "3e-4", "1e-3"],
                                                  "grid": {"model.lora": ["true"]}, "seeds": [0, 1]}

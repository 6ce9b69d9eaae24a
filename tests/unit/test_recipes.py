"""configs/recipes/: every recipe loads as a config, passes the launch checks at the process count its header
command names (what `selfdistill train --num-processes N` runs before any worker starts), and keeps the paper's
settings except where its `deviations` say otherwise."""

from __future__ import annotations

import re

import pytest

from helpers import ROOT
from selfdistill.config import PAPER_TEACHER_TEMPLATE, load_config
from selfdistill.training import check_launch, planned_strategy

RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


def test_there_are_the_four_7b_recipes():
    assert [p.name for p in RECIPES] == [f"qwen2.5-7b-{task}-{setup}.yaml" for task in ("science", "tooluse")
                                         for setup in ("1gpu-lora", "8gpu-fsdp-vllm")]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_loads_and_passes_the_launch_checks(path):
    text = path.read_text()
    command = re.search(r"#\s+(selfdistill train .*?--output \S+)", text.replace("\\\n#", ""), re.S).group(1)
    assert f"--config configs/recipes/{path.name}" in command
    task = "paper_tooluse" if "tooluse" in path.name else "paper_science"
    assert f"--data task:{task}:" in command
    world = int(m.group(1)) if (m := re.search(r"--num-processes (\d+)", command)) else 1
    cfg = load_config(path)
    check_launch(cfg, world, planned_strategy(cfg.dist.strategy, world))
    assert (world, cfg.dist.strategy, cfg.model.lora) in ((8, "fsdp", False), (1, "auto", True))
    assert cfg.model.name == "Qwen/Qwen2.5-7B-Instruct" and cfg.rollout.engine == "vllm"
    # the paper's settings (paper.md 1.7 and the official main.py)
    assert (cfg.train.method, cfg.train.prompts_per_step, cfg.rollout.max_new_tokens) == ("sdft", 32, 2048)
    assert (cfg.loss.divergence, cfg.loss.skip_first_tokens, cfg.loss.importance_weights) == ("forward_kl", 3, True)
    assert (cfg.teacher.kind, cfg.teacher.ema_rate, cfg.context.teacher_template) == ("ema", 0.01,
                                                                                       PAPER_TEACHER_TEMPLATE)
    assert cfg.data.max_teacher_prompt_tokens >= 2048
    assert cfg.optim.lr == (1e-4 if cfg.model.lora else 5e-5)
    assert bool(cfg.deviations) == cfg.model.lora  # LoRA and its rate are the only departures, and say so

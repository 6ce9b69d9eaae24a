from __future__ import annotations

import pytest

from selfdistill.config import ConfigError, from_dict, load_config, parse_dotted_overrides, to_dict, to_yaml

# The official code's teacher template, written out here (not imported): /work/shared/reference/paper.md §1.2,
# with its $orig_content / $output_text renamed to our $prompt / $demonstration.
OFFICIAL_TEMPLATE = ("\n$orig_content\n\nThis is an example for a response to the question:\n$output_text\n\n"
                     "Now answer with a response of your own, including the thinking process.\n"
                     ).replace("$orig_content", "$prompt").replace("$output_text", "$demonstration")


def test_defaults_are_the_papers():
    c = load_config()
    assert (c.loss.divergence, c.loss.support, c.loss.skip_first_tokens) == ("forward_kl", "full", 3)
    assert (c.teacher.kind, c.teacher.ema_rate, c.rollout.num_rollouts, c.rollout.temperature) == ("ema", 0.01, 1, 1.0)
    assert (c.optim.lr, c.optim.schedule, c.optim.warmup_steps, c.optim.max_grad_norm) == (5e-5, "cosine", 10, 1.0)
    assert c.train.prompts_per_step == 32
    assert c.context.teacher_template == OFFICIAL_TEMPLATE
    assert load_config(overrides={"context.teacher_template": "paper"}).context.teacher_template == OFFICIAL_TEMPLATE


def test_precedence_yaml_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("loss:\n  divergence: reverse_kl\n  skip_first_tokens: 5\noptim:\n  lr: 1e-4\n")
    c = load_config(y, {"loss.skip_first_tokens": "2"})
    assert c.loss.divergence == "reverse_kl" and c.loss.skip_first_tokens == 2 and c.optim.lr == 1e-4


def test_cpu_preset_records_deviation():
    c = load_config(preset="cpu")
    assert c.rollout.max_new_tokens == 64 and c.deviations


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'loss.divergence'"):
        load_config(overrides={"loss.divergense": "forward_kl"})


@pytest.mark.parametrize("key,val,frag", [
    ("optim.lr", "-1e-4", "optim.lr must be > 0"),
    ("teacher.ema_rate", "0", "ema_rate must be in (0, 1]"),
    ("teacher.ema_rate", "1.5", "ema_rate must be in (0, 1]"),
    ("loss.divergence", "kl", "is not one of"),
    ("train.max_steps", "abc", "expected an integer"),
    ("train.micro_batch_size", "3", "multiple of"),
    ("rollout.batch_size", "-1", "rollout.batch_size must be >= 0"),
    ("rollout.steps_per_generation", "0", "rollout.steps_per_generation must be >= 1"),
    ("rollout.vllm_sleep", "yes", "is not one of"),
    ("rollout.vllm_gpu_memory_utilization", "1.2", "rollout.vllm_gpu_memory_utilization must be in (0, 1)"),
])
def test_out_of_range(key, val, frag):
    with pytest.raises(ConfigError) as e:
        load_config(overrides={key: val})
    assert frag in str(e.value)


def test_dotted_parse_and_roundtrip():
    o = parse_dotted_overrides(["--loss.divergence", "jsd", "--train.seed=3"])
    assert o == {"loss.divergence": "jsd", "train.seed": "3"}
    c = load_config(overrides=o)
    assert c.train.seed == 3
    assert to_dict(from_dict(to_dict(c))) == to_dict(c)
    assert "divergence: jsd" in to_yaml(c)


def test_rollouts_in_another_dtype_turn_importance_weights_on_unless_set():
    from selfdistill.config import load_config
    assert load_config(overrides={"rollout.dtype": "bfloat16"}).loss.importance_weights is True
    assert load_config(overrides={"rollout.dtype": "float32"}).loss.importance_weights is False  # model's own
    assert load_config(overrides={"rollout.dtype": "model"}).loss.importance_weights is False
    off = load_config(overrides={"rollout.dtype": "bfloat16", "loss.importance_weights": False})
    assert off.loss.importance_weights is False
    with pytest.raises(Exception, match="rollout.dtype"):
        load_config(overrides={"rollout.dtype": "float16"})


def test_rollouts_for_several_steps_need_importance_weights_and_turn_them_on():
    assert load_config(overrides={"rollout.steps_per_generation": 2}).loss.importance_weights is True
    assert load_config(overrides={"rollout.steps_per_generation": 1}).loss.importance_weights is False
    with pytest.raises(ConfigError, match="steps_per_generation=4 samples later steps' rollouts with older weights; "
                                          "it needs loss.importance_weights=true"):
        load_config(overrides={"rollout.steps_per_generation": 4, "loss.importance_weights": False})
    sft = load_config(overrides={"rollout.steps_per_generation": 4, "loss.importance_weights": False,
                                 "train.method": "sft"})  # no rollouts: nothing to correct
    assert sft.rollout.steps_per_generation == 4


def test_a_rollout_copy_under_fsdp2_is_refused_in_one_line_before_any_worker_starts():
    from selfdistill.training import TrainingError, check_launch
    cfg = load_config(overrides={"rollout.dtype": "bfloat16", "dist.strategy": "fsdp"})
    with pytest.raises(TrainingError, match=r"^rollout.dtype=bfloat16 with the hf engine needs a whole copy of the "
                                            r"weights per process, which dist.strategy=fsdp shards; use "
                                            r"rollout.engine=vllm \(its own dtype\) or rollout.dtype=model$"):
        check_launch(cfg, 2, "fsdp")
    check_launch(cfg, 2, "ddp")  # replicas hold whole weights: allowed
    check_launch(load_config(overrides={"rollout.dtype": "bfloat16", "rollout.engine": "vllm"}), 2, "fsdp")

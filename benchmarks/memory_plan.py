"""Memory per GPU of an SDFT run, by arithmetic (not measured): full fine-tuning under FSDP2 with colocated vLLM
rollouts, with and without vLLM's sleep mode and FSDP2's CPU offload, and LoRA on one GPU.

    python benchmarks/memory_plan.py            # the docs/multi_gpu.md table (Qwen2.5 1.5B/7B/14B/32B, 1 and 8 GPUs)
    python benchmarks/memory_plan.py --gpu-gb 141 --gpus 1,8 --micro-batch 2

What each byte is (GB = 1e9 bytes), per GPU, following what selfdistill allocates:
* sharded states, 20 B/param / N: float32 parameters 4, float32 gradients 4, AdamW m and v 8, the float32 EMA
  teacher 4 (docs/multi_gpu.md). With `dist.cpu_offload` they live in CPU RAM instead.
* training transient: the FSDP2 root (embeddings, untied lm_head) and two decoder layers gathered in bf16 with
  their bf16 gradients; checkpointed activations (2 bytes x hidden x layers per token) plus one layer recomputed
  ((6 hidden + 4 intermediate) x 2 bytes per token); logits for the completion: student and teacher in bf16 and
  the student's logit gradient, 3 x B x L x V x 2 bytes (the loss itself is chunked).
* vLLM engine, awake: `rollout.vllm_gpu_memory_utilization` x the GPU (0.3 by default), which must hold the bf16
  weights (2P, every rank has a whole copy: no tensor parallelism in the engine) plus the KV cache of the rank's
  rollouts; where 0.3 is too small the table raises it to what the engine needs (the "vLLM share" column).
  Asleep (`rollout.vllm_sleep`, level 1): about nothing on the GPU; the weights wait in CPU RAM.
* weight push: one parameter gathered in float32 at a time (the largest is the embedding, V x hidden x 4 bytes).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    name: str
    params: float
    hidden: int
    layers: int
    intermediate: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool


QWEN25 = [  # Qwen2.5-*-Instruct config.json values
    Geometry("1.5B", 1.54e9, 1536, 28, 8960, 2, 128, 151936, True),
    Geometry("7B", 7.62e9, 3584, 28, 18944, 4, 128, 152064, False),
    Geometry("14B", 14.77e9, 5120, 48, 13824, 8, 128, 152064, False),
    Geometry("32B", 32.76e9, 5120, 64, 27648, 8, 128, 152064, False),
]
GB = 1e9


def layer_params(g: Geometry) -> float:
    attn = g.hidden * g.hidden * 2 + g.hidden * g.kv_heads * g.head_dim * 2
    return attn + 3 * g.hidden * g.intermediate


def kv_gb(g: Geometry, sequences: int, tokens: int) -> float:
    return 2 * g.kv_heads * g.head_dim * 2 * g.layers * sequences * tokens / GB


def train_transient_gb(g: Geometry, micro_batch: int, prompt: int, completion: int, sharded: bool = True) -> float:
    root = g.vocab * g.hidden * (1 if g.tied else 2)
    gathered = (root + 2 * layer_params(g)) * 2 * 2 if sharded else 0  # bf16 weights + bf16 gradients
    tokens = micro_batch * (prompt + completion)
    acts = tokens * (2 * g.hidden * g.layers + (6 * g.hidden + 4 * g.intermediate) * 2)
    logits = 3 * micro_batch * completion * g.vocab * 2
    return (gathered + acts + logits) / GB


@dataclass(frozen=True)
class Plan:
    states: float
    rollout_phase: float
    train_phase: float
    vllm_share: float
    ram_per_machine: float

    @property
    def peak(self) -> float:
        return max(self.rollout_phase, self.train_phase)


def full_finetune(g: Geometry, n: int, sleep: bool, offload: bool, a: argparse.Namespace) -> Plan:
    states = 20 * g.params / n / GB
    on_gpu = 0.0 if offload else states
    weights = 2 * g.params / GB
    engine = max(a.vllm_share * a.gpu_gb, weights + kv_gb(g, a.prompts_per_step // n, a.prompt + a.completion))
    push = g.vocab * g.hidden * 4 / GB
    rollout = on_gpu + engine + push
    train = on_gpu + train_transient_gb(g, a.micro_batch, a.prompt, a.completion) + (0 if sleep else engine)
    ram = (20 * g.params if offload else 0) / GB + (min(n, 8) * weights if sleep else 0)
    return Plan(states, rollout, train, engine / a.gpu_gb, ram)


def lora_one_gpu(g: Geometry, a: argparse.Namespace) -> Plan:
    # r x (in + out) per adapted linear layer: q, o (h -> h), k, v (h -> kv), gate, up, down (h <-> I)
    trainable = a.lora_r * g.layers * (9 * g.hidden + 2 * g.kv_heads * g.head_dim + 3 * g.intermediate)
    states = (2 * g.params + trainable * 16 + trainable * 4) / GB  # bf16 base; adapter fp32 + grads + Adam; teacher
    engine = max(a.vllm_share * a.gpu_gb, 2 * g.params / GB + kv_gb(g, a.prompts_per_step, a.prompt + a.completion))
    transient = train_transient_gb(g, a.micro_batch, a.prompt, a.completion, sharded=False)
    return Plan(states, states + engine, states + transient, engine / a.gpu_gb, 2 * g.params / GB)


def row(g: Geometry, n: int, setting: str, p: Plan, gpu_gb: float, offload: bool = False) -> str:
    return (f"| {g.name} | {n} | {setting} | {p.states:.1f}{' (RAM)' if offload else ''} | {p.vllm_share:.2f} | "
            f"{p.rollout_phase:.1f} | {p.train_phase:.1f} | {p.peak:.1f} | "
            f"{'yes' if p.peak <= gpu_gb else '**no**'} | {p.ram_per_machine:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--gpus", default="1,8")
    ap.add_argument("--vllm-share", type=float, default=0.3, help="vLLM's gpu_memory_utilization")
    ap.add_argument("--prompts-per-step", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=1024, help="prompt tokens (teacher prompt: demonstration added)")
    ap.add_argument("--completion", type=int, default=2048)
    ap.add_argument("--lora-r", type=int, default=16)
    a = ap.parse_args()
    print(f"# per GPU, GB; {a.gpu_gb:.0f} GB GPUs; vLLM share {a.vllm_share}; {a.prompts_per_step} prompts/step; "
          f"micro-batch {a.micro_batch}; {a.prompt} + {a.completion} tokens; gradient checkpointing; bf16 compute")
    print("| model | GPUs | setting | sharded states | vLLM share | rollout phase | training phase | peak | fits? | "
          "CPU RAM per machine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for g in QWEN25:
        for n in map(int, a.gpus.split(",")):
            for offload in (False, True):
                for sleep in (True, False):
                    setting = f"full, FSDP2{' + CPU offload' if offload else ''}, vLLM sleep {'on' if sleep else 'off'}"
                    print(row(g, n, setting, full_finetune(g, n, sleep, offload, a), a.gpu_gb, offload))
        print(row(g, 1, f"LoRA r={a.lora_r}, vLLM sleep on", lora_one_gpu(g, a), a.gpu_gb))


if __name__ == "__main__":
    main()

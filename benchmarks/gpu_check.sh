#!/usr/bin/env bash
# GPU smoke benchmark from the repo checkout, no install needed (torch/transformers/accelerate on the machine):
#   bash benchmarks/gpu_check.sh [--tiny] [--warm 3 --timed 5 --batch 8 --new-tokens 128]   (limit: 8 minutes)
cd "$(dirname "$0")/.." && PYTHONPATH=src HF_HUB_OFFLINE=1 exec timeout 480 "${PYTHON:-python}" benchmarks/gpu_check.py "$@"

#!/bin/bash
# The battery sweep, seed by seed (both methods at every seed before the next), one process, the machine's 2 threads.
# Code: the frozen copy in /tmp/battery_src (the working tree changes while this runs).
export PYTHONPATH=/tmp/battery_src TOKENIZERS_PARALLELISM=false
for seed in 0 1 2; do
  for m in "sdft 1e-4,3e-4,1e-3" "sft 1e-5,3e-5,1e-4"; do
    set -- $m
    /work/main/.venv/bin/python -m selfdistill sweep --task battery@n_per_set=4,n_control=2 --methods $1 --lrs $2 \
      --seeds $seed, --demo-settings --train.max_steps 20 --eval-every 0 --output /work/runs_battery/sweep || exit 1
  done
done

#!/bin/bash
# The battery sweep as run (one process at a time, this project's 2-core CPU): seed by seed, both methods at a seed
# before the next. Seeds 0 and 1 ran on 2026-12-01 in one folder, seed 2 on 2026-12-02 in another from the same code
# (commit d010f95); the runs of both folders were merged into this folder's results.json and reported with
# `selfdistill report`. In one folder the loop below does it all: the sweep is resumable (rerunning a command skips
# finished runs) and joins its seeds in results.json. OUT is the run folder.
OUT=${OUT:-runs/battery}
for seed in 0 1 2; do
  for m in "sdft 1e-4,3e-4,1e-3" "sft 1e-5,3e-5,1e-4"; do
    set -- $m
    selfdistill sweep --task battery@n_per_set=4,n_control=2 --methods $1 --lrs $2 \
      --seeds $seed, --demo-settings --train.max_steps 20 --eval-every 0 --output "$OUT" || exit 1
  done
done
selfdistill report "$OUT"

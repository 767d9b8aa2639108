#!/usr/bin/env bash
# Rebuilds the shipped CS model (lorun_peft/assets/pretrained/cs) from Train400, exactly as shipped:
#  1. phase 1 (Block-9-share, 667 Adam steps) and phase 2 at 25 % (333 steps): the LoRun-9 run of the
#     equal-budget benchmark (benchmarks/bench_equal_budget_cs.py, seed 0);
#  2. phase 2 for 10 % and 50 % on the same frozen backbone (333 steps each, own learned Phi);
#  3. assemble, evaluate each set on Set11 with `lorun evaluate`.
# Usage: scripts/pretrained/build_cs.sh [DATA_DIR]   (default ../shared/data); 1 CPU thread per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=runs/equal_budget_cs
for variant in lorun_phase1 lorun; do
  $PY benchmarks/bench_equal_budget_cs.py --data-dir "$DATA" --steps 1000 --output-dir $OUT --only $variant
done
for r in 10 50; do
  $PY examples/train_cs.py --data_dir "$DATA" --mode lorun --backbone $OUT/lorun_phase1/backbone \
    --ratio "0.$r" --adapter_set_name ratio-$r --max_steps 333 --batch_size 8 --patch_size 64 \
    --learning_rate 1e-3 --max_grad_norm 1.0 --seed 0 --no_show_progress --output_dir runs/pretrained/cs_sets_$r
done
$PY scripts/pretrained/assemble.py cs $OUT/lorun_phase1/backbone \
  $OUT/lorun/adapters/ratio-25 runs/pretrained/cs_sets_10/ratio-10 runs/pretrained/cs_sets_50/ratio-50
for r in 10 25 50; do
  .venv/bin/lorun evaluate "$DATA/Set11" --task cs --ratio "0.$r" --output-dir runs/pretrained/eval_cs_$r
done

#!/usr/bin/env bash
# Rebuilds the shipped SR model (lorun_peft/assets/pretrained/sr) from BSDS500_train200 with kernel K1:
#  1. the SR comparison (Block-9 / Block-9-share / LoRun-9 at 1200 steps; LoRun = 800 shared + 400 LoRA,
#     set x2-k1), whose LoRun-9 backbone and set are shipped;
#  2. phase 2 at x4 on the same frozen backbone (400 steps, set x4-k1);
#  3. assemble, evaluate both sets on Set5 with `lorun evaluate`.
# Usage: scripts/pretrained/build_sr.sh [DATA_DIR]   (default ../shared/data); 1 CPU thread per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$PY benchmarks/run_task_comparisons.py --task sr --steps 1200 --data-dir "$DATA" --output-dir runs/cmp_sr
$PY examples/train_sr.py --data_dir "$DATA" --mode lorun --backbone runs/cmp_sr/lorun_phase1 --scale 4 --kernel K1 \
  --adapter_set_name x4-k1 --max_steps 400 --batch_size 4 --patch_size 64 --seed 0 --no_show_progress \
  --output_dir runs/pretrained/sr_sets_x4
$PY scripts/pretrained/assemble.py sr runs/cmp_sr/lorun_phase1 runs/cmp_sr/lorun/x2-k1 runs/pretrained/sr_sets_x4/x4-k1
for s in 2 4; do
  .venv/bin/lorun evaluate "$DATA/Set5" --task sr --scale $s --kernel K1 --output-dir runs/pretrained/eval_sr_x$s
done

#!/usr/bin/env bash
# Rebuilds the shipped inpainting model (lorun_peft/assets/pretrained/inpainting) from Train400
# (docs/pretrained.md has the scores and wall times; logs in docs/logs/):
#  1. backbone: Block-9-share, HQS with PixelInpainting's closed-form step, U-Net width 16 / depth 3,
#     70 % of the pixels missing (a new random mask per batch), 5000 Adam steps of batch 8 64x64 patches,
#     lr 1e-3 cosine, clip 1.0, seed 0, example defaults (bf16 autocast where native, channels_last).
#  2. phase 2 per missing rate (50, 70, 90 %) on the frozen backbone: K stage adapters + the set's step
#     sizes, 2000 steps each. Two lanes side by side, one core each.
#  3. assemble (float16 storage), evaluate each set on Set11 with `lorun evaluate`.
# Usage: scripts/pretrained/build_inpainting.sh [DATA_DIR]   (default ../shared/data); 1 CPU thread per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
PY=${PY:-.venv/bin/python}
OUT=${INPAINTING_BUILD_DIR:-runs/inpainting_field}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
COMMON=(--data_dir "$DATA" --batch_size 8 --patch_size 64 --learning_rate 1e-3 --max_grad_norm 1.0 --seed 0
  --eval_data "$DATA/Set11" --checkpoint_every 250 --save_total_limit 2 --no_show_progress)
if [ ! -f "$OUT/backbone/model.safetensors" ]; then
  $PY examples/train_inpainting.py "${COMMON[@]}" --mode shared --missing 0.7 --width 16 --depth 3 \
    --max_steps 5000 --eval_every 1000 --resume_from_checkpoint latest --output_dir "$OUT/backbone"
fi
phase2() {  # missing-percent steps
  $PY examples/train_inpainting.py "${COMMON[@]}" --mode lorun --backbone "$OUT/backbone" \
    --missing "0.$1" --max_steps "$2" --eval_every 1000 --resume_from_checkpoint latest --output_dir "$OUT/sets/m$1"
}
lane_a() { phase2 90 2000 && phase2 70 2000; }
lane_b() { phase2 50 2000; }
lane_a > "$OUT/lane_a.out" 2>&1 &
lane_b > "$OUT/lane_b.out" 2>&1 &
wait
$PY scripts/pretrained/assemble.py inpainting "$OUT/backbone" "$OUT"/sets/m{50,70,90}/missing-* --storage-dtype float16
for m in 50 70 90; do
  .venv/bin/lorun evaluate "$DATA/Set11" --task inpainting --adapter-set "missing-$m" --output-dir "$OUT/eval_$m"
done

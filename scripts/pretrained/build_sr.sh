#!/usr/bin/env bash
# Rebuilds the shipped SR model (lorun_peft/assets/pretrained/sr) from BSDS500_train200 on a 2-core CPU,
# exactly as shipped (docs/pretrained.md has the scores, steps and wall times; logs in docs/logs/sr_*):
#  1. backbone: Block-9-share with HQS data steps (USRNet's closed-form blur-and-downsample solve), U-Net
#     width 24 / depth 3, x2, a kernel drawn from the 12 of kernels_12.mat for every batch and a noise
#     std drawn per sample in [0, 7.65/255], batch 4 of 64x64 crops, Adam 1e-3 cosine over 4000 steps with
#     the step parameters mu_k at 10x that rate (--step_lr_multiplier, docs/training.md), clip 1.0.
#  2. phase 2 on the frozen backbone, two runs side by side: all-kernel sets x2, x3, x4 (--kernel all) and
#     the K1-only set x2-k1, same data and noise, batch 4 of 72x72 crops (a multiple of 2, 3 and 4),
#     Adam 1e-3 cosine over SR_SET_STEPS (2500) steps, mu_k at 10x.
#  3. assemble (weights stored in float16) with the kernels.
#  4. a second leg of x2 and x2-k1 side by side, 1000 steps each from their assembled weights
#     (scripts/pretrained/sr_sets_leg.sh: --warm_start, lr 5e-4 cosine), re-assembled with x3 and x4.
#  5. score every set on every kernel (scripts/pretrained/eval_sr_kernels.py), noiseless and with noise
#     std 7.65/255.
# One thread per run (OMP_NUM_THREADS=1). A later leg continues from the shipped weights with
# scripts/pretrained/sr_sets_leg.sh.
# Usage: scripts/pretrained/build_sr.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
PY=.venv/bin/python
OUT=${SR_BUILD_DIR:-runs/sr_hqs}
SET_STEPS=${SR_SET_STEPS:-2500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
COMMON=(--data_dir "$DATA" --noise_sigma_max 0.03 --batch_size 4 --learning_rate 1e-3 --step_lr_multiplier 10
  --max_grad_norm 1.0 --seed 0 --eval_data "$DATA/Set5" --log_every 25 --no_show_progress
  --checkpoint_every 500 --save_total_limit 1 --resume_from_checkpoint latest)
$PY examples/train_sr.py "${COMMON[@]}" --mode shared --kernel all --scale 2 --algorithm hqs --denoiser unet \
  --width 24 --depth 3 --patch_size 64 --max_steps 4000 --eval_every 1000 --output_dir "$OUT/backbone" \
  >"$OUT/backbone.out" 2>&1
set_run() {  # folder kernel scale
  $PY examples/train_sr.py "${COMMON[@]}" --mode lorun --backbone "$OUT/backbone" --kernel "$2" --scale "$3" \
    --patch_size 72 --max_steps "$SET_STEPS" --eval_every 500 --output_dir "$OUT/$1" >"$OUT/$1.out" 2>&1
}
set_run sets_x2 all 2 &
set_run sets_x2k1 K1 2 &
wait
set_run sets_x3 all 3 &
set_run sets_x4 all 4 &
wait
$PY scripts/pretrained/assemble.py sr "$OUT/backbone" "$OUT"/sets_x2/x2 "$OUT"/sets_x3/x3 "$OUT"/sets_x4/x4 \
  "$OUT"/sets_x2k1/x2-k1 --kernels "$DATA/kernels/kernels_12.mat" --storage-dtype float16
LEG="$OUT/leg2"
SR_LEG_DIR="$LEG" scripts/pretrained/sr_sets_leg.sh "$DATA" 1000 x2 x2-k1
$PY scripts/pretrained/assemble.py sr "$LEG/start/backbone" "$LEG/x2/x2" "$LEG/start/adapters/x3" \
  "$LEG/start/adapters/x4" "$LEG/x2-k1/x2-k1" --kernels "$DATA/kernels/kernels_12.mat" --storage-dtype float16
SHIPPED=lorun_peft/assets/pretrained/sr
for sigma in 0 0.03; do
  $PY scripts/pretrained/eval_sr_kernels.py "$SHIPPED/backbone" "$SHIPPED/adapters:x2-k1" \
    "$SHIPPED/adapters:x2" "$SHIPPED/adapters:x3" "$SHIPPED/adapters:x4" --test-data "$DATA/Set5" \
    --kernels "$DATA/kernels/kernels_12.mat" --noise-sigma "$sigma" \
    --out "$OUT/sr_kernel_table_noise_$sigma.json"
done

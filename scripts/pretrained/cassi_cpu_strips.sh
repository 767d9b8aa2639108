#!/usr/bin/env bash
# A CPU candidate for the CASSI model (2 cores, one thread per run), NOT what ships: the shipped model is
# rebuilt by build_cassi.sh (GPU-trained). Step 1 was run (docs/pretrained.md, "Full-width strips"; log
# docs/logs/cassi_backbone_cpu_strips.jsonl): its backbone scored 23.18 dB on cloth, below the shipped one
# (23.40), so steps 2-3 were not run. They are the recipe for a backbone that clears it; step 3 then replaces
# the shipped assets. Trains on stuffed_toys only; cloth is the test cube.
#  1. backbone: Block-9-share, HQS, U-Net width 32 / depth 3 started as the identity (--identity_init), 28 KAIST
#     bands, 32x256 full-width strips of stuffed_toys (--patch_height: the test scene's band overlap, see
#     docs/tasks_cassi.md), random band-wise brightness 0.2, a new strip of the TSA simulation mask per batch,
#     batch 2, Adam 1e-3 cosine over 4000 steps, clip 1.0, bf16 autocast on the denoiser.
#  2. phase 2 on the frozen backbone, two sets side by side (same data and strips): mask-28 (strips of the
#     simulation mask) and mask-real (strips of the real 660x660 TSA mask, noise std in [0, 0.02]), 1500 steps.
#  3. assemble in float16 (mask-real gets the whole 660x660 real mask, so it restores the real scenes as they
#     are), score mask-28 on cloth, restore the five real TSA scenes.
# Usage: scripts/pretrained/cassi_cpu_strips.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
PY=.venv/bin/python
OUT=${CASSI_BUILD_DIR:-runs/cassi_strips}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SIM="$DATA/CASSI/simulation/mask.mat"
COMMON=(--data_dir "$DATA" --train_data "$DATA/CASSI/cubes/stuffed_toys.npz" --eval_data "$DATA/CASSI/cubes/cloth.npz"
  --band_gain 0.2 --patch_size 256 --patch_height 32 --batch_size 2 --learning_rate 1e-3 --max_grad_norm 1.0
  --eval_every 500 --checkpoint_every 250 --save_total_limit 1 --log_every 25 --no_show_progress --seed 0
  --resume_from_checkpoint latest)
$PY examples/train_cassi.py "${COMMON[@]}" --mode shared --mask "$SIM" --denoiser unet --width 32 --depth 3 \
  --identity_init --max_steps 4000 --output_dir "$OUT/backbone"
$PY examples/train_cassi.py "${COMMON[@]}" --mode lorun --backbone "$OUT/backbone" --mask "$SIM" \
  --adapter_set_name mask-28 --max_steps 1500 --output_dir "$OUT/sets" &
$PY examples/train_cassi.py "${COMMON[@]}" --mode lorun --backbone "$OUT/backbone" --mask "$DATA/CASSI/real_TSA/mask.mat" \
  --adapter_set_name mask-real --max_steps 1500 --noise_sigma_max 0.02 --output_dir "$OUT/real_sets" &
wait
$PY scripts/pretrained/assemble.py cassi "$OUT/backbone" "$OUT/sets/mask-28" "$OUT/real_sets/mask-real" \
  --set-mask "mask-real=$DATA/CASSI/real_TSA/mask.mat" --storage-dtype float16
$PY scripts/pretrained/eval_cassi.py "$DATA" --json docs/logs/cassi_eval_gap_tv.json
for scene in "$DATA"/CASSI/real_TSA/measurements/scene*.mat; do
  .venv/bin/lorun restore "$scene" --task cassi --adapter-set mask-real --output "$OUT/real/$(basename "$scene" .mat).png"
done
$PY scripts/pretrained/real_cassi_figure.py "$OUT"/real/scene{1,2,3,4,5}.npy --out docs/figures/cassi_real_tsa.png

#!/usr/bin/env bash
# Rebuilds the shipped CS model (lorun_peft/assets/pretrained/cs) from Train400 with the shipped recipe
# (docs/pretrained.md has the scores and wall times; logs in docs/logs/cs_*):
#  1. backbone: Block-9-share, U-Net width 16 / depth 3, learned Phi at 25 %, 14000 Adam steps of batch 8
#     64x64 patches, lr 1e-3 cosine, clip 1.0, seed 0, with the example defaults (bf16 autocast where the
#     CPU computes it natively, else fp32; channels_last). ~60 min on one core with AMX/AVX512-BF16.
#     Leg 2 warm-starts from it (--warm_start) for 800 steps at lr 2e-4 (seed 1): +0.04 dB on Set11.
#  2. phase 2 per ratio of ISTA-Net's set on the frozen backbone: K stage adapters + the set's own learned
#     Phi, started from the backbone's (--phi_init backbone, its SVD); 2000 steps at 1 %, 6000 at
#     4/10/25/30/40/50 %. Two lanes run side by side, one core each (about 3.5 hours with the backbone).
#     As shipped, the sets of 4/10/25/30/40/50 % were later legs on the float16 copy of the shipped backbone
#     (scripts/pretrained/cs_sets_leg.sh), here they train on the float32 backbone.
#  3. assemble, evaluate each set on Set11 with `lorun evaluate`.
# Usage: scripts/pretrained/build_cs.sh [DATA_DIR]   (default ../shared/data); 1 CPU thread per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
PY=.venv/bin/python
OUT=${CS_BUILD_DIR:-runs/cs_field}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--data_dir "$DATA" --batch_size 8 --patch_size 64 --learning_rate 1e-3 --max_grad_norm 1.0 --seed 0
  --eval_data "$DATA/Set11" --checkpoint_every 250 --save_total_limit 2 --no_show_progress)
if [ ! -f "$OUT/backbone_leg1/model.safetensors" ]; then  # leg 1
  $PY examples/train_cs.py "${COMMON[@]}" --mode shared --ratio 0.25 --width 16 --depth 3 --max_steps 14000 \
    --eval_every 1000 --resume_from_checkpoint latest --output_dir "$OUT/backbone_leg1"
fi
if [ ! -f "$OUT/backbone/model.safetensors" ]; then  # leg 2: warm start, lr 2e-4 cosine, new seed
  $PY examples/train_cs.py "${COMMON[@]}" --mode shared --ratio 0.25 --warm_start "$OUT/backbone_leg1" \
    --max_steps 800 --learning_rate 2e-4 --seed 1 --eval_every 400 --output_dir "$OUT/backbone"
fi
phase2() {  # ratio-percent steps
  $PY examples/train_cs.py "${COMMON[@]}" --mode lorun --backbone "$OUT/backbone" --ratio "$(printf '0.%02d' "$1")" \
    --max_steps "$2" --eval_every 500 --resume_from_checkpoint latest --output_dir "$OUT/sets/r$1"
}
lane_a() { phase2 1 2000 && phase2 10 6000 && phase2 40 6000; }
lane_b() { phase2 4 6000 && phase2 25 6000 && phase2 30 6000 && phase2 50 6000; }
lane_a > "$OUT/lane_a.out" 2>&1 &
lane_b > "$OUT/lane_b.out" 2>&1 &
wait
$PY scripts/pretrained/assemble.py cs "$OUT/backbone" "$OUT"/sets/r{1,4,10,25,30,40,50}/ratio-* --storage-dtype float16
for r in 01 04 10 25 30 40 50; do
  .venv/bin/lorun evaluate "$DATA/Set11" --task cs --ratio "0.$r" --output-dir "$OUT/eval_$r"
done

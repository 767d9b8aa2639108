#!/usr/bin/env bash
# A CPU warm-start leg for the shipped SR adapter sets (docs/pretrained.md, "Later legs"): each listed
# set (x2, x3, x4: all-kernel; x2-k1: K1 only) continues from its shipped weights (--warm_start) on the
# unchanged shipped backbone, with the 12 published kernels of kernels_12.mat drawn per batch and a noise
# std per sample in [0, 7.65/255]: batch 4 of SR_LEG_PATCH x SR_LEG_PATCH (72) BSDS500_train200 crops,
# Adam SR_LEG_LR (5e-4) cosine over STEPS steps with the step parameters at SR_LEG_STEP_LR_MULT (10) x
# that rate (docs/training.md), clip 1.0, seed 0, one CPU thread per set, all sets side by side.
# Re-assemble afterwards with scripts/pretrained/assemble.py and score with eval_sr_kernels.py.
# Usage: scripts/pretrained/sr_sets_leg.sh DATA_DIR STEPS SET [SET ...]
#   e.g. scripts/pretrained/sr_sets_leg.sh ../shared/data 2000 x2 x3 x4 x2-k1
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=$1; STEPS=$2; shift 2
PY=.venv/bin/python
OUT=${SR_LEG_DIR:-runs/sr_sets_leg}
LR=${SR_LEG_LR:-5e-4}
STEP_LR_MULT=${SR_LEG_STEP_LR_MULT:-10}
PATCH=${SR_LEG_PATCH:-72}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
# the starting point is copied once, so that a resumed leg starts from the same weights
[ -f "$OUT/start/backbone/model.safetensors" ] || cp -r lorun_peft/assets/pretrained/sr "$OUT/start"
for set in "$@"; do
  case $set in
    x2-k1) kernel=K1; scale=2 ;;
    x[234]) kernel=all; scale=${set#x} ;;
    *) echo "unknown SR set $set (expected x2, x3, x4 or x2-k1)" >&2; exit 2 ;;
  esac
  $PY examples/train_sr.py --data_dir "$DATA" --noise_sigma_max 0.03 --patch_size "$PATCH" --batch_size 4 \
    --learning_rate "$LR" --step_lr_multiplier "$STEP_LR_MULT" --max_grad_norm 1.0 --seed 0 \
    --eval_data "$DATA/Set5" --eval_every 500 --checkpoint_every 250 --save_total_limit 1 --log_every 25 \
    --no_show_progress --mode lorun --backbone "$OUT/start/backbone" --warm_start "$OUT/start/adapters/$set" \
    --kernel "$kernel" --scale "$scale" --max_steps "$STEPS" --resume_from_checkpoint latest \
    --output_dir "$OUT/$set" \
    >"$OUT/$set.out" 2>&1 &
done
wait

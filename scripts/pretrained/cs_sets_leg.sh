#!/usr/bin/env bash
# A longer phase-2 leg for some CS sets on the committed shipped backbone (docs/pretrained.md, "Longer
# sets"): each listed ratio gets a new set of K stage adapters + its own Phi (started from the backbone's),
# trained for STEPS Adam steps of batch 8 64x64 Train400 patches, lr 1e-3 cosine, clip 1.0, seed 0, one
# CPU thread, one set after the other. Re-assemble afterwards with scripts/pretrained/assemble.py.
# Usage: scripts/pretrained/cs_sets_leg.sh DATA_DIR STEPS RATIO_PERCENT [RATIO_PERCENT ...]
#   e.g. scripts/pretrained/cs_sets_leg.sh ../shared/data 6000 40 50 30
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=$1; STEPS=$2; shift 2
PY=.venv/bin/python
OUT=${CS_LEG_DIR:-runs/cs_sets_leg}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
[ -f "$OUT/backbone/model.safetensors" ] || cp -r lorun_peft/assets/pretrained/cs/backbone "$OUT/backbone"
for r in "$@"; do
  $PY examples/train_cs.py --data_dir "$DATA" --batch_size 8 --patch_size 64 --learning_rate 1e-3 \
    --max_grad_norm 1.0 --seed 0 --eval_data "$DATA/Set11" --checkpoint_every 250 --save_total_limit 2 \
    --no_show_progress --mode lorun --backbone "$OUT/backbone" --ratio "$(printf '0.%02d' "$r")" \
    --max_steps "$STEPS" --eval_every 1000 --resume_from_checkpoint latest --output_dir "$OUT/r$r"
done

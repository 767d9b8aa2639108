"""Evaluate a LoRun model (a backbone, plus an adapter set) on test images or cubes.

The task comes from the model's physics: CS on Set11 (the ratio of the adapter set), SR on Set5 (its
kernel and scale; HR cropped to a multiple of the scale, PSNR/SSIM on Y with a ``scale`` border), CASSI on
cubes (per-band MST protocol, resampled to 28 bands). Writes ``metrics.csv``, ``metrics.json``, restored
images and, with ``--stagewise``, ``stagewise.csv`` + ``stagewise.png``; prints the per-image table.

    python examples/evaluate.py --backbone runs/cs/backbone --adapter_set runs/cs/sets/r25 \
        --adapter_set_name ratio-25 --output_dir runs/cs/eval --stagewise
    python examples/evaluate.py --backbone runs/sr/block --test_data ../shared/data/Set5
    python examples/evaluate.py --backbone runs/cassi/backbone \
        --real_cassi ../shared/data/CASSI/real_TSA/measurements

See docs/evaluation.md.
"""

import sys

from lorun_peft.evaluation.command import main as evaluate_main


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and evaluate; 0 on success, 2 on bad input."""
    return evaluate_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())

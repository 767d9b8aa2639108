"""Train a LoRun deep unfolding network for coded aperture snapshot spectral imaging (SD-CASSI).

Cubes (``.npz``/``.mat``, H x W x C) are cropped at random, resampled to the 28 KAIST/TSA wavelengths
(CAVE: 31 bands, 400-700 nm) and measured on the fly with the coded aperture ``--mask`` (default: the TSA
256x256 simulation mask) and a 2-pixel dispersion; patches smaller than the mask use one random mask crop
of the patch size per run. The unfolding is HQS (paper). Phase 1 (``--mode shared``) or Block-K
(``--mode block``) saves a backbone; phase 2 (``--mode lorun --backbone DIR``) saves the adapter set.
Any band count works with ``--bands N`` when the cubes have N bands.

    python examples/train_cassi.py --mode shared --train_data ../shared/data/CASSI/cubes/stuffed_toys.npz \
        --patch_size 128 --output_dir runs/cassi/backbone
    python examples/train_cassi.py --mode lorun --backbone runs/cassi/backbone \
        --output_dir runs/cassi/sets/m28
    python examples/train_cassi.py --smoke --output_dir /tmp/cassi-smoke

See docs/tasks_cassi.md.
"""

import sys

from lorun_peft.data.tasks import main_for_task


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run one training phase; 0 on success, 2 on bad input."""
    return main_for_task("cassi", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())

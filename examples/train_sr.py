"""Train a LoRun deep unfolding network for super-resolution with a known blur (SR).

The degradation is ``y = (x * k) downsampled by s`` (USRNet convention) with kernel ``--kernel K1..K12`` of
USRNet's ``kernels_12.mat`` and scale ``--scale 2|3|4``: one model (or adapter set) per kernel and scale,
as in the paper. Phase 1 (``--mode shared``) or Block-K (``--mode block``) saves a backbone into
``--output_dir``; phase 2 (``--mode lorun --backbone DIR``) saves the adapter set (default name
``x<s>-k<i>``) into ``--output_dir/<name>``. Data: BSDS500_train200 (RGB) or ``--train_data``; optional
measurement noise ``--noise_sigma``. Without kernels_12.mat, synthetic stand-ins are used with a warning.

    python examples/train_sr.py --mode shared --kernel K1 --scale 2 --output_dir runs/sr/backbone
    python examples/train_sr.py --mode lorun --backbone runs/sr/backbone --kernel K5 --scale 4 \
        --output_dir runs/sr/sets/x4k5
    python examples/train_sr.py --smoke --output_dir /tmp/sr-smoke

See docs/tasks_sr.md.
"""

import sys

from lorun_peft.data.tasks import main_for_task


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run one training phase; 0 on success, 2 on bad input."""
    return main_for_task("sr", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())

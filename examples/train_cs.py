"""Train a LoRun deep unfolding network for block compressive sensing (CS).

Phase 1 (``--mode shared``, Block-K-share) or the Block-K baseline (``--mode block``) saves a backbone into
``--output_dir``; phase 2 (``--mode lorun --backbone DIR``) adds K stage LoRA adapters for ``--ratio`` and
saves the adapter set into ``--output_dir/<adapter_set_name>``. Data: Train400 (gray) under
``<repo>/../shared/data`` or ``--train_data``; Phi is learned (paper) unless ``--phi_matrix`` gives
ISTA-Net's. Defaults follow the paper: K = 9, PGD, gamma = 10, Adam, l2 loss, rho = lambda = 0.5.

    python examples/train_cs.py --mode shared --ratio 0.25 --output_dir runs/cs/backbone
    python examples/train_cs.py --mode lorun --backbone runs/cs/backbone --ratio 0.10 \
        --output_dir runs/cs/sets/r10      # -> runs/cs/sets/r10/ratio-10
    accelerate launch --multi_gpu --num_processes 2 examples/train_cs.py --mode shared ...
    python examples/train_cs.py --smoke --output_dir /tmp/cs-smoke      # seconds, no data needed

See docs/tasks_cs.md.
"""

import sys

from lorun_peft.data.tasks import main_for_task


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run one training phase; 0 on success, 2 on bad input."""
    return main_for_task("cs", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""Training of LoRun unfolding networks with accelerate: phase 1 (shared backbone) and phase 2 (stage LoRA).

:func:`train` runs either phase (what trains is what has ``requires_grad``), configured by
:class:`UnfoldingTrainingConfig`; checkpoints are atomic safetensors folders that resume bit-exactly.
See docs/training.md.
"""

from .checkpoint import latest_checkpoint, list_checkpoints, load_model_state, read_trainer_state
from .config import UnfoldingTrainingConfig
from .loop import (
    StepBatches,
    TrainResult,
    cosine_lr_lambda,
    derive_seed,
    evaluate_psnr,
    reconstruction_loss,
    train,
)

__all__ = [
    "StepBatches",
    "TrainResult",
    "UnfoldingTrainingConfig",
    "cosine_lr_lambda",
    "derive_seed",
    "evaluate_psnr",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_state",
    "read_trainer_state",
    "reconstruction_loss",
    "train",
]

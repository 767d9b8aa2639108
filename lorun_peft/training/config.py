"""Configuration of the LoRun training loop (both phases).

One dataclass, :class:`UnfoldingTrainingConfig`, describes a run of :func:`lorun_peft.training.train`:
steps, Adam learning rate and cosine schedule, batch size per process, accumulation, clipping, mixed
precision, measurement noise, evaluation / checkpoint / logging cadence and resume. Every field carries
``metadata={"help": ...}`` so the class works with ``transformers.HfArgumentParser`` and documents itself
in ``--help``; ``__post_init__`` rejects bad values with a message naming the field and what it expects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .precision import MIXED_PRECISION_CHOICES


@dataclass
class UnfoldingTrainingConfig:
    """Hyper-parameters of one training phase (phase 1: shared backbone, phase 2: stage LoRA).

    The same config drives both phases; which parameters train is decided by ``requires_grad`` on the model.
    Steps count optimizer updates; ``batch_size`` is per process and per micro-batch, so one update sees
    ``batch_size * gradient_accumulation_steps * num_processes`` patches.
    """

    output_dir: str = field(
        default="runs/lorun", metadata={"help": "Folder for checkpoints, log.jsonl and the final weights."}
    )
    max_steps: int = field(default=1000, metadata={"help": "Number of optimizer updates (>= 1)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak Adam learning rate (> 0)."})
    step_lr_multiplier: float = field(
        default=1.0,
        metadata={
            "help": "Learning rate of the step parameters (rho/mu and lambda of every stage) as a "
            "multiple of learning_rate (> 0); same schedule."
        },
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1, in [0, 1)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2, in [0, 1)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon (> 0)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam (L2) weight decay (>= 0)."})
    batch_size: int = field(default=8, metadata={"help": "Patches per micro-batch and per process (>= 1)."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches whose gradients are summed into one update (>= 1)."}
    )
    max_grad_norm: float | None = field(
        default=1.0,
        metadata={"help": "Clip the global gradient norm to this value (> 0); None or 0 disables clipping."},
    )
    mixed_precision: str = field(
        default="no",
        metadata={
            "help": "Autocast of the denoisers: 'no' (fp32), 'bf16', 'fp16' (CUDA) or 'auto' (bf16 where the "
            "device computes it natively, else fp32). Physics, weights and Adam state stay fp32."
        },
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Run the denoisers in channels_last memory layout (faster conv kernels on CPUs)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute each unfolding stage in the backward pass instead of keeping its activations "
            "(LoRunModel.gradient_checkpointing_enable)."
        },
    )
    gradient_checkpointing_denoiser: bool = field(
        default=False,
        metadata={
            "help": "With gradient_checkpointing: also recompute inside the denoiser, level by level "
            "(denoiser families that support it)."
        },
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up from 0 to learning_rate over this many steps (>= 0)."}
    )
    min_lr_ratio: float = field(
        default=0.0,
        metadata={"help": "Cosine decay ends at learning_rate * min_lr_ratio at max_steps, in [0, 1]."},
    )
    noise_sigma: float = field(
        default=0.0,
        metadata={"help": "Std of the white Gaussian noise added to simulated measurements (>= 0)."},
    )
    noise_sigma_max: float | None = field(
        default=None,
        metadata={
            "help": "With a value: each training sample gets its own noise std drawn uniformly in "
            "[noise_sigma, noise_sigma_max] (one model for a range of noise levels, as USRNet trains)."
        },
    )
    max_train_time_s: float | None = field(
        default=None,
        metadata={
            "help": "Stop after this many seconds of training even before max_steps (evaluate, checkpoint "
            "and save as at the end); the cosine schedule still spans max_steps. None: no limit."
        },
    )
    eval_every: int = field(
        default=0, metadata={"help": "Call eval_fn every this many steps and at the end; 0: only at the end."}
    )
    checkpoint_every: int = field(
        default=0, metadata={"help": "Write a checkpoint every this many steps; 0: no checkpoints."}
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep only the newest this many checkpoints; None keeps all (>= 1)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (newest checkpoint in output_dir, if any) or a checkpoint folder path."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the batches, measurement noise and model RNG (>= 0)."}
    )
    log_every: int = field(
        default=10, metadata={"help": "Append loss / lr / step time to output_dir/log.jsonl every N steps."}
    )
    show_progress: bool = field(
        default=True, metadata={"help": "Show a tqdm progress bar (main process only)."}
    )
    use_cpu: bool = field(
        default=False,
        metadata={"help": "Train on CPU even when a GPU is visible (CPU is used anyway when none is)."},
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes that assemble batches (>= 0)."}
    )

    def __post_init__(self) -> None:
        positive_int = ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every")
        for name in positive_int:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed", "dataloader_num_workers"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.save_total_limit is not None:
            _check_int("save_total_limit", self.save_total_limit, minimum=1)
        for name in ("learning_rate", "adam_epsilon", "step_lr_multiplier"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("weight_decay", "noise_sigma"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.noise_sigma_max is not None and (
            not _is_number(self.noise_sigma_max)
            or not self.noise_sigma <= self.noise_sigma_max < float("inf")
        ):
            raise ValueError(
                f"noise_sigma_max must be None or a finite number >= noise_sigma ({self.noise_sigma}), "
                f"got {self.noise_sigma_max!r}"
            )
        if self.max_train_time_s is not None and (
            not _is_number(self.max_train_time_s) or not 0 < self.max_train_time_s < float("inf")
        ):
            raise ValueError(f"max_train_time_s must be None or a number > 0, got {self.max_train_time_s!r}")
        if not _is_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or self.max_grad_norm < 0):
            raise ValueError(
                f"max_grad_norm must be None, 0 (no clipping) or > 0, got {self.max_grad_norm!r}"
            )
        if self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps ({self.max_steps})"
            )
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}"
            )
        for name in ("channels_last", "gradient_checkpointing", "gradient_checkpointing_denoiser"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.gradient_checkpointing_denoiser and not self.gradient_checkpointing:
            raise ValueError(
                "gradient_checkpointing_denoiser=True needs gradient_checkpointing=True (stage checkpointing "
                "is the outer level)"
            )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a non-empty path string, got {self.output_dir!r}")
        if self.resume_from_checkpoint is not None and (
            not isinstance(self.resume_from_checkpoint, str) or not self.resume_from_checkpoint
        ):
            raise ValueError(
                "resume_from_checkpoint must be None, 'latest' or a checkpoint folder path, "
                f"got {self.resume_from_checkpoint!r}"
            )

    @property
    def clip_grad_norm(self) -> float | None:
        """The clipping threshold, or ``None`` when clipping is off."""
        return self.max_grad_norm if self.max_grad_norm else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of the fields."""
        return asdict(self)

    def to_json_string(self) -> str:
        """The fields as indented JSON (written next to the checkpoints)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

"""What :func:`~lorun_peft.training.train` sets up around a model and puts back when it ends.

The device accelerate will pick, accelerate's process-wide precision record (so a second ``train`` call
may run another precision) and the model's gradient checkpointing switch.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import UnfoldingTrainingConfig


def _accelerator_available() -> bool:
    """Whether a GPU-like device exists; without one accelerate needs ``cpu=True`` to form gloo groups."""
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (xpu is not None and xpu.is_available())
    )


def _accelerator_type() -> str:
    """The device type accelerate picks when :func:`_accelerator_available`."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "xpu"


def _forget_other_precision(mixed_precision: str) -> None:
    """Let a second ``train`` call in one process run another precision (phase 1 bf16, then fp32).

    accelerate keeps its state in a process-wide singleton and refuses a new ``Accelerator`` whose
    ``mixed_precision`` differs from the first one's; the process state (ranks, process group) is
    kept, only the precision record is dropped.
    """
    from accelerate.state import AcceleratorState

    recorded = AcceleratorState._shared_state.get("_mixed_precision")
    if recorded is not None and str(recorded) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _prepare_checkpointing(model: nn.Module, config: UnfoldingTrainingConfig) -> tuple[bool, bool] | None:
    """Switch on the config's gradient checkpointing; returns the model's previous state (None: untouched)."""
    if not config.gradient_checkpointing:
        return None
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"gradient_checkpointing=True needs a model that recomputes its stages (a LoRunModel); "
            f"{type(model).__name__} cannot"
        )
    before = (bool(getattr(model, "gradient_checkpointing", False)), model.checkpoints_denoiser)
    enable(denoiser=config.gradient_checkpointing_denoiser)
    return before


def _restore_checkpointing(model: nn.Module, before: tuple[bool, bool]) -> None:
    enabled, denoiser = before
    model.gradient_checkpointing_disable()
    if enabled:
        model.gradient_checkpointing_enable(denoiser=denoiser)

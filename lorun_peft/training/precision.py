"""Numeric precision and memory layout of training: which autocast pays on this machine.

``UnfoldingTrainingConfig.mixed_precision`` is ``"no"``, ``"bf16"``, ``"fp16"`` or ``"auto"``.
:func:`resolve_mixed_precision` turns it into what accelerate runs: ``"auto"`` picks bf16 autocast only
where the hardware computes bf16 natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX
tiles) and fp32 elsewhere, with one log line saying so. PyTorch emulates bf16 on CPUs without those
instructions, which is far slower than fp32 (on a 2-core AVX2 EPYC, a U-Net training step took 7-25x
the fp32 time, docs/training.md), so an explicit ``"bf16"`` there is refused rather than run slowly.

Autocast covers the denoisers only: the unfolding model runs its physics (the CS ``Phi`` matmul, the
FFT solves of SR and CASSI, the initial estimate) in float32 with autocast off (see
``lorun_peft.unfolding.steps.physics_in_fp32``). Weights and Adam state always stay float32
(accelerate's autocast casts per operation and never touches the parameters).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16", "auto")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as oneDNN needs to be fast."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def device_supports_bf16(device: torch.device) -> bool:
    """Native bf16 on ``device``: a CUDA GPU that reports it, or a CPU with :func:`cpu_supports_bf16`."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """The accelerate ``mixed_precision`` to run for the config value ``requested`` on ``device``.

    ``"auto"``: ``"bf16"`` where :func:`device_supports_bf16`, else ``"no"`` (logged once). ``"bf16"``
    on a device without native bf16 raises ``ValueError``; ``"fp16"`` needs CUDA.
    """
    if requested not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {requested!r}")
    native = device_supports_bf16(device)
    if requested == "auto":
        if native:
            return "bf16"
        logger.warning(
            "mixed_precision='auto': %s has no native bf16 (AVX512-BF16/AMX on a CPU), training in fp32",
            device.type,
        )
        return "no"
    if requested == "bf16" and not native:
        raise ValueError(
            f"mixed_precision='bf16' needs native bf16 on the {device.type}: this CPU has neither "
            "AVX512-BF16 nor AMX, and PyTorch's emulation ran a U-Net training step 7-25x slower than "
            "fp32 (docs/training.md). Use mixed_precision='auto' (bf16 where it pays, fp32 elsewhere) or 'no'"
        )
    if requested == "fp16" and device.type != "cuda":
        raise ValueError(
            f"mixed_precision='fp16' needs a CUDA GPU (fp16 autocast with a grad scaler), the run is on "
            f"{device.type}; use 'auto' or 'no'"
        )
    return requested


def set_channels_last(model: nn.Module, enabled: bool = True) -> int:
    """Put every lorun_peft denoiser inside ``model`` in ``channels_last`` (or back to contiguous) layout.

    Only the conv nets change layout; physics operators keep theirs, and the unfolding model hands them
    contiguous tensors. Returns how many denoisers were converted; ``ValueError`` if there are none.
    """
    from lorun_peft.denoisers import DenoiserPreTrainedModel

    denoisers = [m for m in model.modules() if isinstance(m, DenoiserPreTrainedModel)]
    if not denoisers:
        raise ValueError(
            f"channels_last changes the layout of lorun_peft denoisers, and {type(model).__name__} has none; "
            "set channels_last=False"
        )
    layout = torch.channels_last if enabled else torch.contiguous_format
    for denoiser in denoisers:
        denoiser.to(memory_format=layout)
    return len(denoisers)

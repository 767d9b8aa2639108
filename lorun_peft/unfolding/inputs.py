"""Checks of what a caller hands to ``LoRunModel.forward``/``restore``: measurement, image size, dtype.

A restoration network fed a wrong-shaped, non-finite or integer measurement, or asked for an image
size that could not have produced it, would return a plausible-looking wrong image; these checks turn
each of those into one ``ValueError``/``TypeError`` that names the expected form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lorun_peft.physics import LinearOperator


def _crop(x: Tensor, image_size: tuple[int, ...] | None) -> Tensor:
    """``x[..., :H, :W]`` for ``image_size=(H, W)`` (no-op for None)."""
    if image_size is None:
        return x
    height, width = (int(s) for s in image_size)
    if height > x.shape[-2] or width > x.shape[-1]:
        raise ValueError(f"image_size {(height, width)} is larger than the estimate {tuple(x.shape[-2:])}")
    return x[..., :height, :width]


def _check_autocast_dtype(dtype: torch.dtype | None, device: torch.device) -> None:
    """``ValueError`` unless ``dtype`` is None or a half type the device computes natively."""
    from lorun_peft.training.precision import device_supports_bf16

    if dtype is None:
        return
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"autocast_dtype=torch.float16 needs a CUDA GPU, the model is on {device.type}")
    if dtype == torch.bfloat16 and not device_supports_bf16(device):
        raise ValueError(
            f"autocast_dtype=torch.bfloat16 needs native bf16 on the {device.type} (AVX512-BF16 or AMX on "
            "a CPU); without it PyTorch emulates bf16, far slower than fp32. Leave autocast_dtype=None"
        )


def _check_image_size(
    physics: LinearOperator, measurement: Tensor, grid: Tensor, image_size: tuple[int, ...]
) -> None:
    """``ValueError`` unless an image of ``image_size`` gives a measurement of ``measurement``'s shape.

    ``grid`` is the estimate ``(B, C, H', W')`` on the physics' grid (e.g. block CS's padded one); a size
    that could not have produced this measurement (too large, or smaller by a whole block) would
    otherwise be cropped silently.
    """
    if len(image_size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image_size must be (H, W) with positive integers, got {image_size!r}")
    shape = (grid.shape[0], grid.shape[1], int(image_size[0]), int(image_size[1]))
    try:
        expected = tuple(physics.measurement_shape(shape))
    except ValueError as exc:
        raise ValueError(f"image_size {tuple(image_size)} does not fit this physics: {exc}") from exc
    if expected != tuple(measurement.shape):
        raise ValueError(
            f"image_size {tuple(image_size)} does not match the measurement: an image of that size gives "
            f"a measurement of shape {expected}, got {tuple(measurement.shape)}"
        )


def _first_bad_index(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def _validated_measurement(physics: LinearOperator, measurement: Any) -> tuple[Tensor, bool]:
    """``(batched measurement, whether it came batched)`` once ``measurement`` fits ``physics``.

    One measurement or a batch (layout: ``physics.check_measurement``); it must be a finite
    floating-point tensor.
    """
    if not isinstance(measurement, Tensor):
        raise TypeError(f"measurement must be a torch.Tensor, got {type(measurement).__name__}")
    if not measurement.is_floating_point():
        raise TypeError(
            f"measurement must be a floating-point tensor (float32/float64), got {measurement.dtype}; "
            "convert it with .float() (and scale integer images to [0, 1])"
        )
    try:
        physics.check_measurement(measurement)
        batched = True
    except ValueError as batched_error:
        try:
            physics.check_measurement(measurement.unsqueeze(0))
        except ValueError:
            raise ValueError(
                f"measurement of shape {tuple(measurement.shape)} fits neither a batch nor a single "
                f"measurement: {batched_error}"
            ) from batched_error
        batched = False
    for name, bad in (("NaN", torch.isnan(measurement)), ("Inf", torch.isinf(measurement))):
        if bad.any():
            raise ValueError(
                f"measurement contains {int(bad.sum())} {name} value(s), the first at index "
                f"{_first_bad_index(bad)} of shape {tuple(measurement.shape)}; expected finite values"
            )
    return (measurement if batched else measurement.unsqueeze(0)), batched

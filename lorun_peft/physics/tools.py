"""Checks and numbers every linear operator gets: the adjoint test, the operator norm, a safe PGD step.

They only call ``A`` and ``A_adjoint``, so they work on the built-in operators and on wrapped ones
(:func:`~lorun_peft.physics.as_operator`) alike; DeepInverse tests its operators the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["adjointness_test", "operator_norm", "pgd_step_size"]


def _reference(op: Any) -> tuple[torch.dtype, torch.device]:
    tensors = [*op.parameters(), *op.buffers()] if hasattr(op, "parameters") else []
    for tensor in tensors:
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
        if tensor.is_complex():  # an FFT operator's transfer function: its real counterpart
            return tensor.real.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def _check_shape(image_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in image_shape)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"image_shape must be a sequence of ints like (1, C, H, W), got {image_shape!r}"
        ) from exc
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be (B, ...) with every axis >= 1, got {shape}")
    return shape


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a.double() * b.double()).sum())


def adjointness_test(op: Any, image_shape: Any, generator: torch.Generator | None = None) -> float:
    """Relative error ``|<A x, y> - <x, A^T y>| / max(|<A x, y>|, |<x, A^T y>|)`` for random ``x``, ``y``.

    A correct adjoint gives rounding error (about 1e-7 in float32, 1e-15 in float64); anything larger means
    ``A_adjoint`` is not the adjoint of ``A`` and PGD/HQS steps would not minimise the data term.
    """
    shape = _check_shape(image_shape)
    dtype, device = _reference(op)
    with torch.no_grad():
        x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        ax = op.A(x)
        y = torch.randn(ax.shape, generator=generator, dtype=ax.dtype).to(device)
        left, right = _dot(ax, y), _dot(x, op.A_adjoint(y))
    scale = max(abs(left), abs(right), 1e-300)
    return abs(left - right) / scale


def operator_norm(
    op: Any,
    image_shape: Any,
    iterations: int = 100,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> float:
    """``||A||_2``, the largest singular value, by power iteration on ``A^T A`` from a random start.

    Stops when the estimate changes by less than ``tol`` (relative) or after ``iterations`` steps.
    """
    shape = _check_shape(image_shape)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    dtype, device = _reference(op)
    with torch.no_grad():
        x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        x = x / x.norm()
        estimate = 0.0
        for _ in range(iterations):
            z = op.A_adjoint(op.A(x))
            value = float(z.norm())
            if not math.isfinite(value):
                raise ValueError(
                    f"the power iteration on A^T A gave a non-finite value ({value}): A or A_adjoint returns "
                    "NaN/Inf or overflows on a unit-norm image; expected a finite linear operator"
                )
            if value == 0.0:
                break
            x = z / value
            if abs(value - estimate) <= tol * value:
                estimate = value
                break
            estimate = value
    return math.sqrt(estimate)


def pgd_step_size(op: Any, image_shape: Any, **kwargs: Any) -> float:
    """``1 / ||A||^2``: a safe PGD step ``rho``, half the bound ``2 / ||A||^2`` past which it diverges."""
    norm = operator_norm(op, image_shape, **kwargs)
    if norm == 0.0:
        raise ValueError("A maps every image to 0 (||A|| = 0): no gradient step can recover anything")
    return 1.0 / norm**2

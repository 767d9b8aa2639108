"""Gaussian denoising: ``A = I``, so ``y = x + n``.

The simplest member of the physics family, used to train or check a denoiser alone through the same
unfolding loop (the PGD step becomes a relaxation towards ``y``, the HQS step a weighted average).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import (
    LinearOperator,
    Scalar,
    as_batch_scalar,
    check_image_tensor,
    check_step_size,
    register_physics,
)


@register_physics
class Denoising(LinearOperator):
    """Identity degradation on ``(B, C, H, W)`` images; measurement and image share one shape."""

    physics_type = "denoising"

    def _check(self, t: Tensor, what: str) -> None:
        check_image_tensor(t, what)

    def A(self, x: Tensor) -> Tensor:
        self._check(x, "image")
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return y

    def hqs_step(self, z: Tensor, y: Tensor, mu: Scalar) -> Tensor:
        """``(y + mu z) / (1 + mu)``."""
        check_step_size("mu", mu, like=z)
        self._check(z, "iterate")
        self.check_measurement(y)
        if z.shape != y.shape:
            raise ValueError(
                f"measurement has shape {tuple(y.shape)}, expected the iterate's {tuple(z.shape)}"
            )
        mu = as_batch_scalar(mu, z)
        return (y + mu * z) / (1 + mu)

    def init(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return y

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(measurement_shape)

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def check_measurement(self, y: Tensor) -> None:
        self._check(y, "measurement")

    def get_config(self) -> dict[str, Any]:
        return {"type": self.physics_type}

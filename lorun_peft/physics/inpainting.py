"""Pixel inpainting, ``y = M * x`` with a binary mask ``M``, as a plain class behind :func:`as_operator`.

:class:`PixelInpainting` is deliberately not a :class:`~lorun_peft.physics.base.LinearOperator`: it is
the kind of ten-line operator a user brings (``A``, ``A_adjoint`` and the closed-form ``prox_l2``), and
the shipped inpainting task runs through the same wrapper as theirs would. :func:`pixel_inpainting`
builds the wrapped operator; its factory name is registered so a saved model rebuilds it.

The mask belongs to the measurement, not to the model: every image has its own. It is a buffer that is
not saved (``persistent=False``); set it with :meth:`PixelInpainting.set_mask` (or let training redraw
it per batch, or let evaluation draw a seeded one per image). ``missing`` is the fraction of pixels a
random mask drops; it names the task mode (``missing-70``) and drives :meth:`PixelInpainting.draw_mask`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LinearOperator, as_float_tensor
from .wrapped import as_operator, register_operator_factory

__all__ = ["INPAINTING_FACTORY", "PixelInpainting", "pixel_inpainting"]

#: Factory name recorded in the config of every wrapped :class:`PixelInpainting`.
INPAINTING_FACTORY = "pixel_inpainting"


#: Widths (pixels) of the normalised convolutions that fill missing pixels in :meth:`PixelInpainting.init`.
FILL_SIGMAS = (0.7, 1.5, 3.0, 6.0, 12.0)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` (3 sigma radius), edges replicated."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _check_missing(missing: Any) -> float:
    if isinstance(missing, bool) or not isinstance(missing, (int, float)) or not math.isfinite(missing):
        raise ValueError(f"missing must be a fraction of pixels in [0, 1), got {missing!r}")
    if not 0.0 <= float(missing) < 1.0:
        raise ValueError(f"missing must be a fraction of pixels in [0, 1), got {missing!r}")
    return float(missing)


class PixelInpainting(nn.Module):
    """``A x = M * x``, ``A^T y = M * y``; ``M`` is ``(1 or B, 1 or C, H, W)``, 1 where a pixel is seen.

    ``prox_l2(z, y, gamma)`` is the exact HQS step ``argmin_x ||Ax - y||^2 / 2 + ||x - z||^2 / (2 gamma)``
    = ``(gamma M y + z) / (gamma M + 1)`` (DeepInverse's convention: ``gamma = 1 / mu``).
    """

    def __init__(self, missing: float = 0.5) -> None:
        super().__init__()
        self.missing = _check_missing(missing)
        self.register_buffer("mask", torch.empty(0), persistent=False)

    def set_mask(self, mask: Any) -> None:
        """Use ``mask`` (1 = observed) for the next measurements: ``(H, W)``, ``(C, H, W)`` or 4-D."""
        mask = as_float_tensor(mask, "inpainting mask")
        if mask.ndim == 2:
            mask = mask[None, None]
        elif mask.ndim == 3:
            mask = mask[None]
        if mask.ndim != 4 or 0 in mask.shape:
            raise ValueError(
                f"inpainting mask has shape {tuple(mask.shape)}; expected (H, W), (C, H, W) or (B, C, H, W)"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("inpainting mask must hold only 0 (missing) and 1 (observed) values")
        like = self.mask
        self.mask = mask.to(device=like.device, dtype=like.dtype if like.is_floating_point() else mask.dtype)

    def draw_mask(self, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
        """A ``(1, 1, H, W)`` mask dropping each pixel with probability ``missing`` (``generator``'s draw)."""
        device = self.mask.device if generator is None else generator.device
        uniform = torch.rand((1, 1, height, width), generator=generator, device=device)
        return (uniform >= self.missing).to(
            self.mask.dtype if self.mask.is_floating_point() else torch.float32
        )

    def _mask_for(self, t: Tensor, what: str) -> Tensor:
        mask = self.mask
        if mask.numel() == 0:
            raise ValueError(
                "the inpainting operator has no mask yet: call model.physics.operator.set_mask(mask) with "
                "the measurement's mask (1 = observed pixel) first (lorun restore: --mask FILE)"
            )
        if t.ndim != 4 or mask.shape[-2:] != t.shape[-2:] or mask.shape[0] not in (1, t.shape[0]):
            raise ValueError(
                f"{what} has shape {tuple(t.shape)}, but the inpainting mask is {tuple(mask.shape)}; "
                "expected (B, C, H, W) with the mask's H x W (set the mask of this measurement first)"
            )
        if mask.shape[1] not in (1, t.shape[1]):
            raise ValueError(f"{what} has {t.shape[1]} channels, the inpainting mask {mask.shape[1]}")
        return mask.to(dtype=t.dtype)

    def check_measurement(self, y: Tensor) -> None:
        """A measurement is an image with its missing pixels zeroed: ``(B, C, H, W)``."""
        if y.ndim != 4 or 0 in y.shape:
            raise ValueError(
                f"measurement has shape {tuple(y.shape)}; expected (B, C, H, W) with every axis >= 1"
            )

    def A(self, x: Tensor) -> Tensor:
        return self._mask_for(x, "image") * x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._mask_for(y, "measurement") * y

    def init(self, y: Tensor) -> Tensor:
        """The initial estimate: seen pixels kept, missing ones filled by normalised Gaussian convolution.

        Each missing pixel takes the Gaussian-weighted mean of the seen pixels around it, at the smallest
        of the widths :data:`FILL_SIGMAS` whose window holds enough of them (2 % of its weight), else the
        image's mean. On Set11 this is within 0.3 dB of harmonic (Laplace) inpainting at 50-90 % missing
        pixels (docs/tasks_inpainting.md), at a few convolutions' cost; ``A^T y`` would leave the stages
        to fill holes from zeros.
        """
        mask = self._mask_for(y, "measurement").expand_as(y)
        seen = y * mask
        out, have = seen, mask > 0
        for sigma in FILL_SIGMAS:
            if bool(have.all()):  # every hole filled: the wider windows would take nothing
                break
            weight = _gaussian_blur(mask, sigma)
            estimate = _gaussian_blur(seen, sigma) / weight.clamp_min(1e-8)
            take = ~have & (weight > 0.02)
            out, have = torch.where(take, estimate, out), have | take
        mean = seen.sum(dim=(-2, -1), keepdim=True) / mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
        return torch.where(have, out, mean.expand_as(out))

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Tensor | float) -> Tensor:
        mask = self._mask_for(y, "measurement")
        return (gamma * mask * y + z) / (gamma * mask + 1)


register_operator_factory(INPAINTING_FACTORY, PixelInpainting)


def pixel_inpainting(missing: float = 0.5) -> LinearOperator:
    """The inpainting operator, wrapped so a :class:`~lorun_peft.LoRunModel` can save and rebuild it."""
    missing = _check_missing(missing)
    return as_operator(PixelInpainting(missing), factory=INPAINTING_FACTORY, args={"missing": missing})

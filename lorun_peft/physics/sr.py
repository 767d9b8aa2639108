"""Super-resolution degradation ``y = (x (*) k) downsampled by s``, USRNet's convention.

``(*)`` is a circular convolution computed with FFTs, the kernel centred as USRNet's ``p2o``
(padded to the image size at the top-left, then rolled by ``-(kh//2, kw//2)``), and the s-fold
sampler keeps the first pixel of every ``s x s`` cell (``x[..., 0::s, 0::s]``). Because the
downsampler folds ``s x s`` aliases of the spectrum onto each low-resolution frequency, ``A A^T``
is diagonal in the low-resolution Fourier domain, which gives the HQS step in closed form (the
USRNet data module). The kernel is a persistent buffer (key ``kernel``) shared by all channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    LinearOperator,
    Scalar,
    as_batch_scalar,
    as_float_tensor,
    check_float_tensor,
    check_image_tensor,
    check_step_size,
    register_physics,
)

#: How far a kernel's sum may be from 1. USRNet's bicubic kernels sum to 1 within 1.1e-4; they are
#: used as given (not renormalised) so that the operator is the published one.
KERNEL_SUM_TOLERANCE = 1e-3


def check_kernel(kernel: Tensor) -> None:
    """Raise ``ValueError`` unless ``kernel`` is a finite 2-D array summing to 1 (within tolerance)."""
    if kernel.ndim != 2:
        raise ValueError(f"blur kernel has shape {tuple(kernel.shape)}, expected a 2-D (kh, kw) kernel")
    if not torch.isfinite(kernel).all():
        raise ValueError("blur kernel has non-finite entries")
    total = float(kernel.sum())
    if abs(total - 1.0) > KERNEL_SUM_TOLERANCE:
        raise ValueError(
            f"blur kernel sums to {total:.6g}, expected 1 (within {KERNEL_SUM_TOLERANCE}); "
            "divide it by its sum"
        )


def _check_scale(scale: Any) -> int:
    integral = isinstance(scale, int) or (isinstance(scale, float) and scale.is_integer())
    if isinstance(scale, bool) or not integral or scale < 1:
        raise ValueError(f"scale must be a positive integer (2, 3, 4, ...), got {scale!r}")
    return int(scale)


def kernel_to_otf(kernel: Tensor, size: tuple[int, int], onesided: bool = False) -> Tensor:
    """Transfer function of ``kernel`` for circular convolution on ``size`` (USRNet's ``p2o``).

    Returns ``fft2`` (``(H, W)``) or, with ``onesided``, ``rfft2`` (``(H, W//2 + 1)``).
    """
    kh, kw = kernel.shape
    height, width = size
    padded = F.pad(kernel, (0, width - kw, 0, height - kh))
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
    return torch.fft.rfft2(padded) if onesided else torch.fft.fft2(padded)


def _zero_upsample(y: Tensor, scale: int) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, C, h*s, w*s)`` with ``y`` at ``[0::s, 0::s]`` and zeros elsewhere."""
    batch, channels, h, w = y.shape
    cells = F.pad(y[:, :, :, None, :, None], (0, scale - 1, 0, 0, 0, scale - 1))
    return cells.reshape(batch, channels, h * scale, w * scale)


@register_physics
class BlurDownsample(LinearOperator):
    """Blur with a 2-D kernel (circular, FFT) then keep every ``scale``-th pixel from the first one.

    Shapes: image ``(B, C, H, W)`` with ``H, W`` multiples of ``scale`` and at least the kernel
    size; measurement ``(B, C, H/s, W/s)``. ``init`` is USRNet's nearest-neighbour upsampling of ``y``.
    """

    physics_type = "blur_downsample"

    def __init__(self, kernel: Tensor, scale: int) -> None:
        super().__init__()
        kernel = as_float_tensor(kernel, "blur kernel")
        check_kernel(kernel)
        self.scale = _check_scale(scale)
        self.register_buffer("kernel", kernel)

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.kernel.shape)}, scale={self.scale}"

    @property
    def grid_factor(self) -> int:
        """``scale`` image pixels per low-resolution pixel; the blur reaches only its kernel's radius."""
        return self.scale

    @staticmethod
    def _check_dtype(t: Tensor, what: str) -> None:
        """``TypeError`` unless ``t`` is a float32 or float64 tensor.

        The FFTs have no float16/bfloat16 kernels on CPU (CUDA's half-precision FFTs take power-of-two
        sizes only), so a raw ``RuntimeError`` from inside ``rfft2`` is replaced by this clear one.
        """
        check_float_tensor(t, what)
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{what} is {t.dtype}; BlurDownsample computes FFTs, expected float32 or float64 "
                "(convert with .float())"
            )

    def _check_image(self, shape: tuple[int, ...]) -> None:
        s = self.scale
        kh, kw = self.kernel.shape
        if len(shape) != 4:
            raise ValueError(f"image has shape {tuple(shape)}, expected (B, C, H, W)")
        height, width = shape[-2:]
        if height % s or width % s:
            raise ValueError(
                f"image size {(height, width)} must be a multiple of the scale {s} (crop it first)"
            )
        if height < kh or width < kw:
            raise ValueError(
                f"image size {(height, width)} is smaller than the kernel {(kh, kw)}; expected at least that"
            )

    def _otf(self, like: Tensor, size: tuple[int, int], onesided: bool = False) -> Tensor:
        return kernel_to_otf(self.kernel.to(like.dtype), size, onesided)

    def A(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H/s, W/s)``."""
        self._check_dtype(x, "image")
        self._check_image(tuple(x.shape))
        check_image_tensor(x)
        size = tuple(x.shape[-2:])
        blurred = torch.fft.irfft2(torch.fft.rfft2(x) * self._otf(x, size, onesided=True), s=size)
        return blurred[..., :: self.scale, :: self.scale]

    def A_adjoint(self, y: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> ``(B, C, h*s, w*s)``: zero-upsample, then circular correlation with ``k``."""
        self.check_measurement(y)
        self._check_dtype(y, "measurement")
        up = _zero_upsample(y, self.scale)
        size = tuple(up.shape[-2:])
        self._check_image(tuple(up.shape))
        return torch.fft.irfft2(torch.fft.rfft2(up) * self._otf(y, size, onesided=True).conj(), s=size)

    def hqs_step(self, z: Tensor, y: Tensor, mu: Scalar) -> Tensor:
        """``x = z + A^T (A A^T + mu I)^-1 (y - A z)``, with ``A A^T`` diagonal in the LR Fourier domain.

        ``A A^T`` has the symbol ``mean over the s x s aliases of |FFT(k)|^2`` (USRNet's ``invW``), so
        this equals USRNet's data module ``(H^T S^T S H + mu I)^-1 (H^T S^T y + mu z)`` exactly.
        """
        check_step_size("mu", mu, like=z)
        residual = -self.residual(z, y)
        s = self.scale
        height, width = z.shape[-2:]
        h, w = height // s, width // s
        power = self._otf(z, (height, width)).abs().square()
        alias_mean = power.reshape(s, h, s, w).mean(dim=(0, 2))
        spectrum = torch.fft.fft2(residual) / (alias_mean + as_batch_scalar(mu, residual))
        return z + self.A_adjoint(torch.fft.ifft2(spectrum).real)

    def init(self, y: Tensor) -> Tensor:
        """Nearest-neighbour upsampling of ``y`` by ``s`` (USRNet's initial estimate)."""
        self.check_measurement(y)
        self._check_image(self.image_shape(tuple(y.shape)))  # the same size rule as A_adjoint
        return F.interpolate(y, scale_factor=self.scale, mode="nearest")

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B, C, h, w)`` -> ``(B, C, h*s, w*s)``."""
        if len(measurement_shape) != 4:
            raise ValueError(f"measurement shape {tuple(measurement_shape)}, expected (B, C, h, w)")
        batch, channels, h, w = measurement_shape
        return (batch, channels, h * self.scale, w * self.scale)

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B, C, H, W)`` -> ``(B, C, H/s, W/s)``."""
        self._check_image(tuple(image_shape))
        batch, channels, height, width = image_shape
        return (batch, channels, height // self.scale, width // self.scale)

    def check_measurement(self, y: Tensor) -> None:
        check_float_tensor(y, "measurement")
        layout = f"(B, C, H/{self.scale}, W/{self.scale})"
        if y.ndim != 4:
            raise ValueError(f"measurement has shape {tuple(y.shape)}, expected {layout}")
        check_image_tensor(y, "measurement", layout)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.physics_type, "scale": self.scale, "kernel_size": list(self.kernel.shape)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BlurDownsample:
        """A placeholder delta kernel of ``kernel_size``; the real kernel comes from the state dict."""
        config = dict(config)
        kh, kw = config.pop("kernel_size")
        delta = torch.zeros(kh, kw)
        delta[kh // 2, kw // 2] = 1.0
        return cls(delta, **config)

"""Single-disperser CASSI (SD-CASSI), as in the KAIST/TSA-Net/MST/DAUHST simulation protocol.

A spectral cube ``x`` (B, C, H, W) is coded by a fixed aperture ``mask`` (H, W), band ``c`` is
shifted ``step * c`` columns to the right, and the bands are summed on the detector:
``y[b, h, j] = sum_c mask[h, j - step*c] * x[b, c, h, j - step*c]``, a (B, H, W + step*(C-1))
measurement (256x256x28 -> 256x310; the real TSA mask 660x660 -> 660x714). The band count comes
from the input, so one operator serves 28 bands or any other count. ``Phi Phi^T`` is diagonal,
which gives the HQS step in closed form. The mask is a persistent buffer (key ``mask``).
"""

from __future__ import annotations

from os import PathLike
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
from .io import load_mat_array


@register_physics
class CASSI(LinearOperator):
    """SD-CASSI with a fixed ``(H, W)`` coded aperture and a dispersion of ``step`` pixels per band.

    ``A`` scatters the shifted masked bands with ``F.fold`` and ``A^T`` reads the ``C`` windows
    ``y[..., step*c : step*c + W]`` as one strided view (``Tensor.unfold``), so no shifted
    ``(B, C, H, W + step*(C-1))`` mask or cube is built per call.
    """

    physics_type = "cassi"

    def __init__(self, mask: Tensor, step: int = 2) -> None:
        super().__init__()
        mask = as_float_tensor(mask, "CASSI mask")
        if mask.ndim != 2:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected a 2-D (H, W) coded aperture")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be an integer >= 1 (pixels of dispersion per band), got {step!r}")
        self.register_buffer("mask", mask)
        self.step = step
        self._phi_s_key: tuple[Any, ...] | None = None
        self._phi_s: Tensor | None = None

    def extra_repr(self) -> str:
        return f"mask_shape={tuple(self.mask.shape)}, step={self.step}"

    def measurement_width(self, bands: int) -> int:
        """``W + step * (C - 1)``."""
        return self.mask.shape[1] + self.step * (bands - 1)

    def _check_image(self, shape: tuple[int, ...]) -> None:
        height, width = self.mask.shape
        if len(shape) != 4 or tuple(shape[-2:]) != (height, width):
            raise ValueError(
                f"cube has shape {tuple(shape)}, expected (B, C, {height}, {width}) to match the mask"
            )

    def _bands_of(self, shape: tuple[int, ...]) -> int:
        height, width = self.mask.shape
        extra = shape[-1] - width if len(shape) == 3 else -1
        if len(shape) != 3 or shape[1] != height or extra < 0 or extra % self.step:
            raise ValueError(
                f"measurement has shape {tuple(shape)}, expected (B, {height}, {width} + {self.step}*(C-1)) "
                f"for C >= 1 bands (e.g. (B, {height}, {self.measurement_width(28)}) for 28 bands)"
            )
        return extra // self.step + 1

    def bands(self, y: Tensor) -> int:
        """Band count ``C`` that the width of a measurement ``(B, H, W + step*(C-1))`` implies."""
        self.check_measurement(y)
        return self._bands_of(tuple(y.shape))

    def A(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, H, W + step*(C-1))``."""
        check_float_tensor(x, "cube")
        self._check_image(tuple(x.shape))
        check_image_tensor(x, "cube")
        batch, bands, height, width = x.shape
        masked = x * self.mask.to(x.dtype)
        # fold's blocks run over (row h, band c) with index h*C + c; each block is one row of W pixels.
        columns = masked.permute(0, 3, 2, 1).reshape(batch, width, height * bands)
        y = F.fold(
            columns, (height, self.measurement_width(bands)), kernel_size=(1, width), stride=(1, self.step)
        )
        return y[:, 0]

    def _windows(self, y: Tensor) -> Tensor:
        """``(B, H, Wy)`` -> view ``(B, C, H, W)``: band ``c`` reads ``y[..., step*c : step*c + W]``."""
        self.bands(y)
        return y.unfold(-1, self.mask.shape[1], self.step).permute(0, 2, 1, 3)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """``(B, H, W + step*(C-1))`` -> ``(B, C, H, W)``: shift each band back, then mask it."""
        return self._windows(y) * self.mask.to(y.dtype)

    def init(self, y: Tensor) -> Tensor:
        """MST/DAUHST's initial estimate ``shift_back(y / C * 2)``: no mask (unlike ``A^T y``)."""
        windows = self._windows(y)
        return windows * (2.0 / windows.shape[1])

    def shifted_mask_energy(self, bands: int, like: Tensor) -> Tensor:
        """``Phi_s = diag(Phi Phi^T) = sum_c shift_c(mask^2)``, ``(H, W + step*(C-1))``.

        Cached per (C, dtype, device) and refreshed whenever the mask changes (``load_state_dict``,
        ``.to()``); computed afresh while the mask requires grad.
        """
        mask = self.mask
        key = (bands, like.dtype, like.device, mask.device, mask.data_ptr(), mask._version)
        if mask.requires_grad or key != self._phi_s_key:
            phi_s = self.A(mask.to(like.dtype).expand(1, bands, *mask.shape))[0].to(like.device)
            if mask.requires_grad:
                return phi_s
            self._phi_s_key, self._phi_s = key, phi_s
        return self._phi_s

    def hqs_step(self, z: Tensor, y: Tensor, mu: Scalar) -> Tensor:
        """``x = z + A^T((y - A z) / (Phi_s + mu))``: exact because ``Phi Phi^T = diag(Phi_s)``."""
        check_step_size("mu", mu, like=z)
        check_float_tensor(z, "cube")
        self._check_image(tuple(z.shape))
        bands = z.shape[1]
        if self.bands(y) != bands:
            raise ValueError(
                f"measurement has shape {tuple(y.shape)}, but the iterate has {bands} bands: expected "
                f"(B, {self.mask.shape[0]}, {self.measurement_width(bands)}) "
                f"= (B, H, W + {self.step}*({bands}-1))"
            )
        residual = -self.residual(z, y)
        denominator = self.shifted_mask_energy(bands, residual) + as_batch_scalar(mu, residual)
        return z + self.A_adjoint(residual / denominator)

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B, H, W + step*(C-1))`` -> ``(B, C, H, W)``."""
        bands = self._bands_of(tuple(measurement_shape))
        return (measurement_shape[0], bands, *self.mask.shape)

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B, C, H, W)`` -> ``(B, H, W + step*(C-1))``."""
        self._check_image(tuple(image_shape))
        return (image_shape[0], image_shape[2], self.measurement_width(image_shape[1]))

    def check_measurement(self, y: Tensor) -> None:
        check_float_tensor(y, "measurement")
        self._bands_of(tuple(y.shape))
        check_image_tensor(y, "measurement", "(B, H, W + step*(C-1))")

    def get_config(self) -> dict[str, Any]:
        return {"type": self.physics_type, "mask_shape": list(self.mask.shape), "step": self.step}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CASSI:
        """A placeholder all-ones mask of ``mask_shape``; the real mask comes from the state dict."""
        config = dict(config)
        shape = config.pop("mask_shape")
        return cls(torch.ones(tuple(shape)), **config)


def load_cassi_mask(path: str | PathLike[str], key: str | None = None) -> Tensor:
    """A 2-D coded aperture from a ``.mat`` file (variable ``mask`` by default), float32 ``(H, W)``."""
    return load_mat_array(path, key, default="mask", ndim=2).float()


def load_cassi_measurement(path: str | PathLike[str], key: str | None = None) -> Tensor:
    """A real 2-D measurement (TSA ``meas_real``, ``(H, W + step*(C-1))``) as float32, without batch dim."""
    return load_mat_array(path, key, default="meas_real", ndim=2).float()

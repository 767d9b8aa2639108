"""Blur kernels for the SR operator: USRNet's published ``.mat`` files and synthetic generators.

``kernels_12.mat`` holds the 12 kernels of the paper's SR experiments (4 isotropic Gaussian, 4
anisotropic Gaussian, 4 motion; 25x25, each summing to 1) and ``kernels_bicubicx234.mat`` the bicubic
kernels for x2, x3, x4 (small negative lobes, sums within 1.1e-4 of 1). Both are MATLAB cells in the
variable ``kernels``. The generators make Gaussian and line-motion kernels of the same families,
centred on pixel ``size // 2`` (the centre :class:`~lorun_peft.physics.sr.BlurDownsample` assumes),
for tests and for training on random kernels when the files are absent.
"""

from __future__ import annotations

import math
from os import PathLike

import numpy as np
import torch
from torch import Tensor

from .io import load_mat_variables, pick_variable

#: Names of the 12 kernels in file order.
KERNELS_12_NAMES: tuple[str, ...] = tuple(
    [f"isotropic-{i}" for i in range(1, 5)]
    + [f"anisotropic-{i}" for i in range(1, 5)]
    + [f"motion-{i}" for i in range(1, 5)]
)


def load_kernel_cell(path: str | PathLike[str], key: str = "kernels") -> list[Tensor]:
    """The 2-D kernels of a MATLAB cell array (``loadmat(path)[key][0, i]``) as float32 tensors."""
    cell = np.asarray(pick_variable(load_mat_variables(path), path, key, key))
    if cell.dtype != object:
        raise ValueError(
            f"{path}: variable {key!r} is a {cell.dtype} array of shape {cell.shape}, "
            "expected a cell of kernels"
        )
    kernels = [torch.from_numpy(np.asarray(k, dtype=np.float32)) for k in cell.reshape(-1)]
    for i, kernel in enumerate(kernels):
        if kernel.ndim != 2:
            raise ValueError(f"{path}: kernel {i} has shape {tuple(kernel.shape)}, expected a 2-D kernel")
    return kernels


def load_kernels_12(path: str | PathLike[str]) -> Tensor:
    """USRNet's ``kernels_12.mat`` as a ``(12, 25, 25)`` tensor, ordered as :data:`KERNELS_12_NAMES`."""
    kernels = load_kernel_cell(path)
    if len(kernels) != 12 or len({tuple(k.shape) for k in kernels}) != 1:
        raise ValueError(f"{path}: expected 12 kernels of one size, got {[tuple(k.shape) for k in kernels]}")
    return torch.stack(kernels)


def load_bicubic_kernels(path: str | PathLike[str]) -> dict[int, Tensor]:
    """USRNet's ``kernels_bicubicx234.mat`` as ``{2: k2, 3: k3, 4: k4}`` (25x25 each)."""
    kernels = load_kernel_cell(path)
    if len(kernels) != 3:
        raise ValueError(f"{path}: expected 3 bicubic kernels (x2, x3, x4), got {len(kernels)}")
    return dict(zip((2, 3, 4), kernels))


def _grid(size: int) -> tuple[Tensor, Tensor]:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    return torch.meshgrid(coords, coords, indexing="ij")


def gaussian_kernel(size: int = 25, sigma: float | tuple[float, float] = 1.6, angle: float = 0.0) -> Tensor:
    """A normalised ``(size, size)`` Gaussian; ``sigma=(s1, s2)`` with ``angle`` (radians): anisotropic."""
    s1, s2 = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    finite = all(math.isfinite(float(v)) for v in (s1, s2, angle))
    if size < 1 or not finite or s1 <= 0 or s2 <= 0:
        raise ValueError(
            f"expected size >= 1, finite positive sigmas and a finite angle, got size={size}, sigma={sigma}, "
            f"angle={angle}"
        )
    rows, cols = _grid(size)
    u = math.cos(angle) * cols + math.sin(angle) * rows
    v = -math.sin(angle) * cols + math.cos(angle) * rows
    kernel = torch.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    return (kernel / kernel.sum()).float()


def motion_kernel(size: int = 25, length: float = 9.0, angle: float = 0.0) -> Tensor:
    """A normalised straight-line motion blur of ``length`` pixels through the centre (bilinear splat)."""
    if size < 1 or not math.isfinite(angle) or not 0 <= length < size:  # a NaN length fails 0 <= length
        raise ValueError(
            f"expected size >= 1, 0 <= length < size and a finite angle, got size={size}, length={length}, "
            f"angle={angle}"
        )
    t = torch.linspace(-length / 2, length / 2, max(2, int(4 * length) + 1), dtype=torch.float64)
    rows = size // 2 + t * math.sin(angle)
    cols = size // 2 + t * math.cos(angle)
    kernel = torch.zeros(size, size, dtype=torch.float64)
    r0, c0 = rows.floor(), cols.floor()
    for dr in (0, 1):
        for dc in (0, 1):
            weight = (1 - (rows - r0 - dr).abs()) * (1 - (cols - c0 - dc).abs())
            r = (r0 + dr).long().clamp(0, size - 1)
            c = (c0 + dc).long().clamp(0, size - 1)
            kernel.index_put_((r, c), weight, accumulate=True)
    return (kernel / kernel.sum()).float()


def synthetic_kernels_12(size: int = 25) -> Tensor:
    """``(12, size, size)`` stand-ins for ``kernels_12.mat`` in the same order (not the published kernels).

    Isotropic widths 0.7, 1.2, 1.6, 2.0 (the paper's); four rotated anisotropic Gaussians; four lines.
    """
    isotropic = [gaussian_kernel(size, s) for s in (0.7, 1.2, 1.6, 2.0)]
    anisotropic = [
        gaussian_kernel(size, (s1, s2), a)
        for s1, s2, a in ((2.0, 0.8, 0.3), (2.8, 1.2, 1.2), (3.5, 1.5, 2.0), (4.0, 2.0, 2.8))
    ]
    motion = [
        motion_kernel(size, length, a) for length, a in ((5.0, 0.0), (9.0, 0.7), (13.0, 1.9), (17.0, 2.6))
    ]
    return torch.stack(isotropic + anisotropic + motion)

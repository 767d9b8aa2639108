"""Pseudo-colour for spectral cubes: each band shown in the colour of its wavelength.

Used wherever a cube becomes an image (restored cubes saved as PNG, comparison figures, the CASSI demo),
so every picture of a cube uses the same mapping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .cubes import CAVE_WAVELENGTHS_31, KAIST_WAVELENGTHS_28

__all__ = ["band_wavelengths", "cassi_to_rgb", "cube_wavelengths", "wavelength_to_rgb"]


def wavelength_to_rgb(wavelength_nm: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Approximate display RGB in [0, 1] of monochromatic light, shape ``(..., 3)``.

    The piecewise-linear approximation of the visible spectrum (violet 380 nm ... red 645-780 nm,
    Bruton's), with the intensity falling off towards both ends (30 % at 380 and 780 nm); zero outside.
    """
    lam = np.asarray(wavelength_nm, dtype=np.float64)
    r = np.zeros_like(lam)
    g = np.zeros_like(lam)
    b = np.zeros_like(lam)
    pieces = [
        ((lam >= 380) & (lam < 440), (440 - lam) / 60, 0.0, 1.0),
        ((lam >= 440) & (lam < 490), 0.0, (lam - 440) / 50, 1.0),
        ((lam >= 490) & (lam < 510), 0.0, 1.0, (510 - lam) / 20),
        ((lam >= 510) & (lam < 580), (lam - 510) / 70, 1.0, 0.0),
        ((lam >= 580) & (lam < 645), 1.0, (645 - lam) / 65, 0.0),
        ((lam >= 645) & (lam <= 780), 1.0, 0.0, 0.0),
    ]
    for where, red, green, blue in pieces:
        r = np.where(where, red, r)
        g = np.where(where, green, g)
        b = np.where(where, blue, b)
    factor = np.where(
        (lam >= 380) & (lam < 420),
        0.3 + 0.7 * (lam - 380) / 40,
        np.where(
            (lam >= 420) & (lam <= 700),
            1.0,
            np.where((lam > 700) & (lam <= 780), 0.3 + 0.7 * (780 - lam) / 80, 0.0),
        ),
    )
    return np.stack([r, g, b], axis=-1) * factor[..., None]


def cube_wavelengths(bands: int) -> tuple[float, ...]:
    """Band centres used for pseudo-colour and resampling: KAIST's 28, CAVE's 31, else 450-650 nm evenly."""
    if bands == 28:
        return KAIST_WAVELENGTHS_28
    if bands == 31:
        return CAVE_WAVELENGTHS_31
    return tuple(float(v) for v in np.linspace(450.0, 650.0, bands))


def band_wavelengths(bands: int, wavelengths: Sequence[float] | None = None) -> np.ndarray:
    """``wavelengths`` (default: :func:`cube_wavelengths`) as an array, checked to have ``bands`` values."""
    values = np.asarray(
        cube_wavelengths(bands) if wavelengths is None else list(wavelengths), dtype=np.float64
    )
    if values.shape != (bands,):
        raise ValueError(f"got {values.size} wavelengths for a cube of {bands} bands")
    return values


def cassi_to_rgb(cube: Tensor, wavelengths: Sequence[float] | None = None) -> Tensor:
    """``(C, H, W)`` cube -> ``(3, H, W)`` pseudo-colour: each band adds its wavelength's RGB.

    ``rgb[j] = sum_c w[c, j] cube[c] / sum_c w[c, j]`` with ``w = wavelength_to_rgb(wavelengths)``, so a
    flat spectrum of value v maps to grey v and values stay in [0, 1] for a cube in [0, 1]. Wavelengths
    default to KAIST's 28 (CAVE's 31, else 450-650 nm evenly).
    """
    if cube.ndim != 3:
        raise ValueError(f"expected a (C, H, W) cube, got shape {tuple(cube.shape)}")
    weights = torch.from_numpy(wavelength_to_rgb(band_wavelengths(cube.shape[0], wavelengths)))
    totals = weights.sum(dim=0)
    if bool((totals <= 0).any()):
        raise ValueError("the wavelengths leave an RGB channel empty (all outside 380-780 nm?)")
    rgb = torch.einsum("cj,chw->jhw", weights / totals, cube.detach().cpu().double())
    return rgb.to(cube.dtype if cube.is_floating_point() else torch.float32)

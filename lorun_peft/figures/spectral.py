"""Spectral figures: every band of a CASSI cube in its wavelength's colour, in a grid.

The pseudo-colour mapping itself (:func:`cassi_to_rgb`, :func:`wavelength_to_rgb`) lives in
:mod:`lorun_peft.data.pseudocolor`, shared with the restored-cube PNGs; this module only lays bands out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from lorun_peft.data.pseudocolor import band_wavelengths, wavelength_to_rgb

from ._canvas import _GAP, _axes, _figure, _save


def cassi_band_grid_figure(
    cube: Tensor,
    path: str | os.PathLike,
    *,
    wavelengths: Sequence[float] | None = None,
    columns: int = 7,
    panel: int = 120,
    dpi: int = 100,
) -> Path:
    """Every band of a ``(C, H, W)`` cube in its wavelength's colour, in a grid with the wavelength above.

    Band ``c`` is shown as ``cube[c] / max(cube) * tint_c`` with ``tint_c = wavelength_to_rgb(lam_c)``
    scaled to a maximum channel of 1, so relative intensities between bands are kept. Size in pixels:
    width ``columns * panel + 2 * 8``, height ``rows * (panel + 18) + 8``.
    """
    if cube.ndim != 3:
        raise ValueError(f"expected a (C, H, W) cube, got shape {tuple(cube.shape)}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    bands = cube.shape[0]
    lam = band_wavelengths(bands, wavelengths)
    tints = wavelength_to_rgb(lam)
    tints = tints / np.maximum(tints.max(axis=1, keepdims=True), 1e-12)
    values = cube.detach().cpu().double().clamp_min(0).numpy()
    values = values / max(float(values.max()), 1e-12)
    rows = math.ceil(bands / columns)
    label_h = 18
    figure = _figure(columns * panel + 2 * _GAP, rows * (panel + label_h) + _GAP, dpi)
    figure.set_facecolor("black")
    for c in range(bands):
        row, column = divmod(c, columns)
        axes = _axes(
            figure, _GAP + column * panel + 2, row * (panel + label_h) + label_h, panel - 4, panel - 4
        )
        axes.imshow(np.clip(values[c][..., None] * tints[c], 0, 1), interpolation="nearest", aspect="auto")
        axes.set_title(f"{lam[c]:.1f} nm", fontsize=7, color="white")
    return _save(figure, path)

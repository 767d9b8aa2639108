"""The canvas every figure draws on: fixed-pixel Agg figures, pixel-placed axes, atomic PNG writes.

Kept apart from the figures so that each figure module holds only what it plots: a figure is a
:func:`_figure` of exact pixel size (same on every machine, no pyplot, no global backend switch),
panels are :func:`_axes` at pixel rectangles, images go through :func:`_as_array` (gray, RGB, or a
spectral cube in pseudo-colour) and :func:`_show`, and :func:`_save` writes the PNG atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorun_peft.data.pseudocolor import cassi_to_rgb

_GAP = 8  # pixels between panels and around the figure
_TITLE = 30  # pixels of the title band above the panels


def _figure(width_px: int, height_px: int, dpi: int = 100) -> Any:
    """A matplotlib ``Figure`` of exactly ``width_px x height_px`` pixels on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _axes(figure: Any, left: float, top: float, width: float, height: float) -> Any:
    """Axes at a pixel rectangle (origin top-left), without ticks."""
    fig_w, fig_h = figure.get_size_inches() * figure.dpi
    axes = figure.add_axes((left / fig_w, 1 - (top + height) / fig_h, width / fig_w, height / fig_h))
    axes.set_xticks([])
    axes.set_yticks([])
    return axes


def _save(figure: Any, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; expected a path ending in .png, got {path}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


def _as_array(image: Tensor | np.ndarray) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` tensor/array -> ``(H, W)`` gray or ``(H, W, 3)`` RGB in [0, 1].

    Cubes (C >= 4) become pseudo-colour RGB through :func:`cassi_to_rgb`.
    """
    tensor = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image.detach())
    tensor = tensor.cpu().double()
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] == 2:
        raise ValueError(
            f"expected an image (C, H, W) with C = 1 (gray), 3 (RGB) or >= 4 (a spectral cube), or (H, W); "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] >= 4:
        tensor = cassi_to_rgb(tensor)
    array = tensor.clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _show(axes: Any, array: np.ndarray) -> None:
    if array.ndim == 2:
        axes.imshow(array, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    else:
        axes.imshow(array, interpolation="nearest", aspect="auto")

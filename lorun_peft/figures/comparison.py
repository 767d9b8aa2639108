"""Side-by-side comparison figures with zoom boxes (the ``lorun demo`` figure).

:func:`comparison_figure` puts restored images next to each other with titles, optional captions
(PSNR/SSIM) and an enlarged crop below each; :func:`auto_zoom_box` picks that crop as the window with
the most detail, so a figure needs no hand-chosen box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._canvas import _GAP, _TITLE, _as_array, _axes, _figure, _save, _show

ZoomBox = tuple[int, int, int, int]  # (top, left, height, width) in pixels

_CAPTION = 22  # pixels of the caption band below the images
_ZOOM_COLOR = "#e41a1c"


def auto_zoom_box(image: Tensor | np.ndarray, size: int | None = None) -> ZoomBox:
    """The ``size x size`` window (default a quarter of the shorter side) with the most detail.

    Detail is the local variance of the gray image, evaluated on a grid of stride ``size // 4``; the
    window with the largest one wins. Returns ``(top, left, height, width)``.
    """
    array = _as_array(image)
    gray = torch.from_numpy(array if array.ndim == 2 else array.mean(axis=2))
    height, width = gray.shape
    size = size or max(4, min(height, width) // 4)
    if not 1 <= size <= min(height, width):
        raise ValueError(f"zoom size must be in [1, {min(height, width)}] for a {height}x{width} image")
    stride = max(1, size // 4)
    x = gray[None, None]
    mean = F.avg_pool2d(x, size, stride=stride)
    variance = F.avg_pool2d(x * x, size, stride=stride) - mean * mean
    index = int(variance.flatten().argmax())
    columns = variance.shape[-1]
    return (index // columns) * stride, (index % columns) * stride, size, size


def comparison_figure(
    images: Sequence[Tensor | np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    *,
    captions: Sequence[str] | None = None,
    zoom: ZoomBox | str | None = "auto",
    panel_width: int = 256,
    dpi: int = 100,
) -> Path:
    """Images side by side with titles, optional captions (e.g. PSNR/SSIM) and a zoomed crop below each.

    ``images``: ``(C, H, W)`` (C = 1, 3, or a cube, shown in pseudo-colour) or ``(H, W)`` in [0, 1], all
    of one size. ``zoom``: ``(top, left, height, width)``, ``"auto"`` (:func:`auto_zoom_box` on the first
    image, usually the ground truth) or ``None``. The box is outlined on every image and its crop shown
    enlarged below. Size in pixels, with ``h = round(panel_width * H / W)``: width
    ``n * panel_width + (n + 1) * 8``; height ``30 + h + 8`` plus ``22`` with captions, plus ``h + 8`` with
    a zoom row.
    """
    arrays = [_as_array(image) for image in images]
    if not arrays:
        raise ValueError("comparison_figure needs at least one image")
    if len(titles) != len(arrays) or (captions is not None and len(captions) != len(arrays)):
        raise ValueError(
            f"got {len(arrays)} images, {len(titles)} titles and "
            f"{'no' if captions is None else len(captions)} captions; expected one title (and caption) each"
        )
    shape = arrays[0].shape[:2]
    if any(array.shape[:2] != shape for array in arrays):
        raise ValueError(f"images must share one size, got {[a.shape[:2] for a in arrays]}")
    height, width = shape
    box = auto_zoom_box(images[0]) if isinstance(zoom, str) and zoom == "auto" else zoom
    if isinstance(box, str):
        raise ValueError(f"zoom must be 'auto', None or (top, left, height, width), got {zoom!r}")
    if box is not None:
        top, left, box_h, box_w = (int(v) for v in box)
        if top < 0 or left < 0 or box_h < 1 or box_w < 1 or top + box_h > height or left + box_w > width:
            raise ValueError(f"zoom box {tuple(box)} does not fit a {height}x{width} image")
    n = len(arrays)
    image_h = round(panel_width * height / width)
    caption_h = _CAPTION if captions is not None else 0
    zoom_h = image_h + _GAP if box is not None else 0
    figure = _figure(n * panel_width + (n + 1) * _GAP, _TITLE + image_h + _GAP + caption_h + zoom_h, dpi)
    for i, array in enumerate(arrays):
        left_px = _GAP + i * (panel_width + _GAP)
        axes = _axes(figure, left_px, _TITLE, panel_width, image_h)
        _show(axes, array)
        axes.set_title(titles[i], fontsize=9)
        if captions is not None:
            figure.text(
                (left_px + panel_width / 2) / figure.bbox.width,
                1 - (_TITLE + image_h + caption_h / 2) / figure.bbox.height,
                captions[i],
                ha="center",
                va="center",
                fontsize=8,
            )
        if box is not None:
            from matplotlib.patches import Rectangle

            axes.add_patch(
                Rectangle(
                    (left - 0.5, top - 0.5), box_w, box_h, fill=False, edgecolor=_ZOOM_COLOR, linewidth=1.2
                )
            )
            crop_axes = _axes(figure, left_px, _TITLE + image_h + caption_h + _GAP, panel_width, image_h)
            _show(crop_axes, array[top : top + box_h, left : left + box_w])
            for spine in crop_axes.spines.values():
                spine.set_edgecolor(_ZOOM_COLOR)
                spine.set_linewidth(1.5)
    return _save(figure, path)

"""Tiled restoration: bounded memory for large measurements whose physics acts locally.

Block CS measures every ``b x b`` block on its own and SR blurs with a small kernel, so a window of
the measurement grid restores the matching image window; the K stages of the denoiser see context
across the window's border, so each window carries a halo of ``overlap`` measurement cells on every
side and only its core is kept. Peak memory is then that of one window, whatever the image size; the
result differs from the whole-image one only near window borders, by less the larger the halo
(measured in docs/inference.md). Operators opt in with :attr:`LinearOperator.grid_factor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lorun_peft.physics import LinearOperator


def tile_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Cover ``[0, length)`` with cores of ``tile`` cells, each inside a window ``overlap`` wider per side.

    Returns ``(window_start, window_stop, core_start, core_stop)`` per tile; cores partition the range
    and windows are clipped to it.
    """
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    windows = []
    for core_start in range(0, length, tile):
        core_stop = min(core_start + tile, length)
        windows.append(
            (max(core_start - overlap, 0), min(core_stop + overlap, length), core_start, core_stop)
        )
    return windows


def restore_in_tiles(
    restore_window: Callable[[Tensor], Tensor],
    measurement: Tensor,
    image_shape: tuple[int, ...],
    grid_factor: int,
    tile: int,
    overlap: int,
) -> Tensor:
    """Restore ``measurement`` window by window into an image of ``image_shape``.

    ``restore_window`` maps a measurement window (the last two axes cut) to its image window, whose
    sides are ``grid_factor`` times the window's. ``tile`` and ``overlap`` count measurement cells.
    """
    height, width = measurement.shape[-2:]
    image = torch.empty(image_shape, dtype=measurement.dtype, device=measurement.device)
    f = grid_factor
    for top, bottom, core_top, core_bottom in tile_windows(height, tile, overlap):
        for left, right, core_left, core_right in tile_windows(width, tile, overlap):
            window = restore_window(measurement[..., top:bottom, left:right])
            rows = slice((core_top - top) * f, (core_bottom - top) * f)
            cols = slice((core_left - left) * f, (core_right - left) * f)
            image[..., core_top * f : core_bottom * f, core_left * f : core_right * f] = window[
                ..., rows, cols
            ]
    return image


def tile_cells(physics: LinearOperator, tile_size: int, tile_overlap: int | None) -> tuple[int, int, int]:
    """``(grid_factor, tile, overlap)`` in measurement cells for ``restore(tile_size=, tile_overlap=)``.

    Sizes are image pixels: the tile is rounded down and the halo (default a quarter of the tile) up to
    whole cells of ``physics.grid_factor``. An operator without one does not act locally: ``ValueError``.
    """
    factor = physics.grid_factor
    if factor is None:
        raise ValueError(
            f"tiled restore needs an operator that acts locally on a grid; {type(physics).__name__} "
            "does not (its grid_factor is None): call restore() without tile_size"
        )
    overlap = tile_size // 4 if tile_overlap is None else tile_overlap
    for name, value, least in (("tile_size", tile_size, factor), ("tile_overlap", overlap, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least} (pixels), got {value!r}")
    return factor, tile_size // factor, -(-overlap // factor)

"""Figures for LoRun results: side-by-side comparisons, stage-wise PSNR, per-stage LoRA weights, CASSI bands.

Every figure is drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch, no display needed), written atomically as a PNG, and its path returned. Figure sizes are
fixed in pixels (stated in each docstring), so a figure is the same on every machine. The data
helpers beside them (:func:`stage_psnr`, :func:`stage_delta_weights`, :func:`cassi_to_rgb`,
:func:`wavelength_to_rgb`, :func:`auto_zoom_box`) return what the figures plot, for use elsewhere.
The ``lorun demo`` command draws its comparison with :func:`comparison_figure`. See docs/figures.md.

Modules, one figure family each: :mod:`.comparison` (side by side, zoom boxes), :mod:`.stagewise`
(stage-wise PSNR), :mod:`.lora_weights` (per-stage LoRA updates), :mod:`.spectral` (CASSI band grid),
over the shared canvas helpers of :mod:`._canvas`. Import everything from ``lorun_peft.figures``.
"""

from lorun_peft.data.pseudocolor import cassi_to_rgb, wavelength_to_rgb

from .comparison import ZoomBox as ZoomBox  # the (top, left, height, width) type of a zoom box
from .comparison import auto_zoom_box, comparison_figure
from .lora_weights import stage_delta_weights, stage_lora_layers, stage_lora_weights_figure
from .spectral import cassi_band_grid_figure
from .stagewise import stage_psnr, stagewise_psnr_figure

__all__ = [
    "auto_zoom_box",
    "cassi_band_grid_figure",
    "cassi_to_rgb",
    "comparison_figure",
    "stage_delta_weights",
    "stage_lora_layers",
    "stage_lora_weights_figure",
    "stage_psnr",
    "stagewise_psnr_figure",
    "wavelength_to_rgb",
]

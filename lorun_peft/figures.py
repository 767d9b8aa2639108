"""Figures for LoRun results: side-by-side comparisons, stage-wise PSNR, per-stage LoRA weights, CASSI bands.

Every figure is drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch, no display needed), written atomically as a PNG, and its path returned. Figure sizes are
fixed in pixels (stated in each docstring), so a figure is the same on every machine. The data
helpers beside them (:func:`stage_psnr`, :func:`stage_delta_weights`, :func:`cassi_to_rgb`,
:func:`wavelength_to_rgb`, :func:`auto_zoom_box`) return what the figures plot, for use elsewhere.
The ``lorun demo`` command draws its comparison with :func:`comparison_figure`. See docs/figures.md.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorun_peft.data.pseudocolor import band_wavelengths, cassi_to_rgb, wavelength_to_rgb

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

ZoomBox = tuple[int, int, int, int]  # (top, left, height, width) in pixels

_GAP = 8  # pixels between panels and around the figure
_TITLE = 30  # pixels of the title band above the panels
_CAPTION = 22  # pixels of the caption band below the images
_ZOOM_COLOR = "#e41a1c"


# ---------------------------------------------------------------------------------------------- plumbing
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


# ---------------------------------------------------------------------------------------------- comparisons
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


# ------------------------------------------------------------------------------------------ stage-wise PSNR
def _default_metric(model: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """The task's protocol PSNR (:meth:`TaskSpec.stage_metric`), else PSNR on [0, 1]."""
    from lorun_peft import metrics
    from lorun_peft.tasks import task_for_physics

    try:
        spec = task_for_physics(model.physics)
    except ValueError:
        return lambda pred, target: metrics.psnr(pred, target, data_range=1.0)
    return spec.stage_metric(model.physics)


def stage_psnr(
    model: Any,
    measurement: Tensor,
    target: Tensor,
    *,
    metric: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> list[float]:
    """PSNR of each stage estimate ``x_1 .. x_K`` of ``model`` against ``target`` (mean over the batch).

    ``measurement``: batched, in the active physics' layout; ``target``: ``(B, C, H, W)`` in [0, 1].
    Estimates are clipped to [0, 1]. ``metric(pred, target)`` defaults to the task's protocol: CS
    ``cs_psnr``, SR ``psnr_y`` with a ``scale`` border, CASSI ``cassi_psnr``, else PSNR on [0, 1].
    Runs in eval mode without gradients (the previous mode is restored).
    """
    metric = metric or _default_metric(model)
    reference = next(model.parameters())
    y = measurement.to(device=reference.device, dtype=reference.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            stages = model(y, return_stages=True, image_size=tuple(target.shape[-2:])).stages
    finally:
        model.train(was_training)
    truth = target.to(device=reference.device, dtype=reference.dtype)
    return [float(metric(estimate.clamp(0, 1), truth)) for estimate in stages]


def stagewise_psnr_figure(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str = "stage-wise PSNR",
    size: tuple[int, int] = (640, 400),
    dpi: int = 100,
) -> Path:
    """PSNR against stage ``k = 1..K``, one line per model (e.g. ``{"LoRun-9": [...], "Block-9": [...]}``).

    ``size``: ``(width, height)`` in pixels (default 640 x 400).
    """
    if not curves or any(len(values) == 0 for values in curves.values()):
        raise ValueError("stagewise_psnr_figure needs at least one non-empty curve")
    figure = _figure(*size, dpi)
    axes = figure.add_axes((0.11, 0.13, 0.85, 0.78))
    longest = max(len(values) for values in curves.values())
    for label, values in curves.items():
        axes.plot(range(1, len(values) + 1), [float(v) for v in values], marker="o", label=label)
    axes.set_xticks(range(1, longest + 1))
    axes.set_xlabel("stage k")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------- LoRA weights
def _stage_layers(model: nn.Module) -> dict[str, Any]:
    from lorun_peft.tuners import StageLoRALayer

    return {name: module for name, module in model.named_modules() if isinstance(module, StageLoRALayer)}


def stage_lora_layers(model: nn.Module) -> list[str]:
    """Module names of the StageLoRA layers of ``model`` (a LoRunModel in lorun mode or a denoiser)."""
    return list(_stage_layers(model))


def _find_layer(model: nn.Module, layer: str) -> tuple[str, Any]:
    layers = _stage_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no StageLoRA layers: load or add an adapter set first")
    if layer in layers:
        return layer, layers[layer]
    matches = [name for name in layers if name.endswith("." + layer)]
    if len(matches) == 1:
        return matches[0], layers[matches[0]]
    raise ValueError(
        f"layer {layer!r} is {'ambiguous' if matches else 'not a StageLoRA layer'}; "
        f"StageLoRA layers: {', '.join(layers)}"
    )


def _active_set(model: nn.Module) -> str | None:
    from lorun_peft.tuners import active_adapter_set

    name = getattr(model, "active_adapter_set", None)
    return name if isinstance(name, str) else active_adapter_set(model)


def _delta_matrix(layer: Any, adapter: str) -> Tensor:
    """``dW`` of one adapter as the 2-D matrix the factors multiply to (times PEFT's scaling).

    Paper layout (eq. 4): ``B @ A`` of shape ``(C_out kh, C_in kw)``; PEFT layout and Linear: ``(C_out,
    C_in kh kw)`` / ``(out, in)``. ``get_delta_weight`` is the source, so the matrix is what the layer adds.
    """
    from torch import nn as torch_nn

    delta = layer.get_delta_weight(adapter).detach()
    if isinstance(layer.base_layer, torch_nn.ConvTranspose2d):  # weight (C_in, C_out, kh, kw)
        delta = delta.transpose(0, 1)
    if delta.ndim == 2:
        return delta.clone()
    if layer.conv_layout[adapter] == "paper":
        return delta.reshape(layer.lora_B[adapter].weight.shape[0], layer.lora_A[adapter].weight.shape[1])
    return delta.reshape(delta.shape[0], -1)


def stage_delta_weights(model: nn.Module, layer: str, set_name: str | None = None) -> list[Tensor]:
    """The K per-stage updates ``dW_k = B_k @ A_k`` (scaled) of one StageLoRA layer, as 2-D matrices.

    ``layer``: a module name from :func:`stage_lora_layers` (or a unique suffix of one); ``set_name``:
    the adapter set (default: the active one). Conv layers in the paper layout give ``(C_out kh, C_in
    kw)`` matrices, exactly ``lora_B.weight @ lora_A.weight`` times ``lora_alpha / r``.
    """
    from lorun_peft.tuners import list_adapter_sets, stage_adapter_name

    name, module = _find_layer(model, layer)
    set_name = set_name or _active_set(model)
    if set_name is None:
        raise ValueError("no active adapter set; pass set_name")
    adapters = []
    for k in range(len(module.lora_A)):
        adapter = stage_adapter_name(set_name, k)
        if adapter not in module.lora_A:
            break
        adapters.append(adapter)
    if not adapters:
        sets = list_adapter_sets(model) or list(getattr(model, "adapter_tasks", {}).keys())
        raise ValueError(f"layer {name} has no adapters of set {set_name!r}; adapter sets: {sets}")
    return [_delta_matrix(module, adapter) for adapter in adapters]


def stage_lora_weights_figure(
    model: nn.Module,
    layer: str,
    path: str | os.PathLike,
    *,
    set_name: str | None = None,
    columns: int | None = None,
    panel: int = 200,
    dpi: int = 100,
) -> Path:
    """The paper's Fig. 12: ``dW_k = B_k @ A_k`` of one layer for every stage ``k``, as an image grid.

    One panel per stage (``columns`` per row, default ``ceil(sqrt(K))``), one symmetric diverging colour
    scale for all stages (so their magnitudes compare), the Frobenius norm in each title. Size in pixels:
    width ``columns * panel + 2 * 8 + 72`` (the colour bar), height ``30 + rows * (panel + 24) + 8``.
    """
    matrices = stage_delta_weights(model, layer, set_name)
    name, _ = _find_layer(model, layer)
    set_name = set_name or _active_set(model)
    count = len(matrices)
    columns = columns or math.ceil(math.sqrt(count))
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    rows = math.ceil(count / columns)
    label_h = 24
    figure = _figure(columns * panel + 2 * _GAP + 72, _TITLE + rows * (panel + label_h) + _GAP, dpi)
    limit = max(float(m.abs().max()) for m in matrices) or 1.0
    image = None
    for k, matrix in enumerate(matrices):
        row, column = divmod(k, columns)
        axes = _axes(
            figure,
            _GAP + column * panel + 4,
            _TITLE + row * (panel + label_h) + label_h,
            panel - 8,
            panel - 8,
        )
        image = axes.imshow(
            matrix.double().cpu().numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
        )
        axes.set_title(f"stage {k + 1}  |dW|={float(matrix.norm()):.3g}", fontsize=8)
    figure.suptitle(f"{name} ({set_name}): dW_k = B_k A_k", fontsize=9, y=1 - 10 / figure.bbox.height)
    colorbar_axes = _axes(
        figure, columns * panel + _GAP + 8, _TITLE + label_h, 12, rows * (panel + label_h) - label_h - 8
    )
    figure.colorbar(image, cax=colorbar_axes)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------- CASSI
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

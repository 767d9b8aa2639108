"""Per-stage LoRA weights: the updates ``dW_k = B_k @ A_k`` of one StageLoRA layer (the paper's Fig. 12).

:func:`stage_lora_layers` lists the StageLoRA layers of a model, :func:`stage_delta_weights` returns
the K per-stage updates of one as 2-D matrices (exactly what the layer adds), and
:func:`stage_lora_weights_figure` draws them on one shared colour scale so their magnitudes compare.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ._canvas import _GAP, _TITLE, _axes, _figure, _save


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

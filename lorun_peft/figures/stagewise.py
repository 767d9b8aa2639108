"""Stage-wise PSNR: the quality of each stage estimate ``x_1 .. x_K`` and its curve figure.

:func:`stage_psnr` measures a model's stage estimates with the task's own protocol (through
:meth:`TaskSpec.stage_metric`), :func:`stagewise_psnr_figure` plots one curve per model, e.g. LoRun-9
against Block-9, to show how the unfolded stages refine the estimate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._canvas import _figure, _save


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

"""Evaluation of LoRun models on test folders, shared by ``examples/evaluate.py`` and the ``lorun`` CLI.

:func:`evaluate_folder` / :func:`evaluate_items` score a model (a block or shared backbone, or a backbone
with an active adapter set) on test images or cubes with the task's published protocol and return an
:class:`EvaluationReport` (per-item PSNR/SSIM, averages, optional stage-wise curves) that writes CSV, JSON
and a PNG plot. :func:`reconstruct_real_cassi` restores real CASSI measurements. See docs/evaluation.md.
"""

from .report import EvaluationReport, ItemResult, write_atomic
from .runner import (
    evaluate_folder,
    evaluate_items,
    load_test_items,
    real_measurement_scale,
    reconstruct_real_cassi,
    save_restored,
    task_of,
)

__all__ = [
    "EvaluationReport",
    "ItemResult",
    "evaluate_folder",
    "evaluate_items",
    "load_test_items",
    "real_measurement_scale",
    "reconstruct_real_cassi",
    "save_restored",
    "task_of",
    "write_atomic",
]

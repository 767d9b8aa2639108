"""Evaluation reports: per-image PSNR/SSIM tables, stage-wise PSNR curves, CSV / JSON / PNG writers.

An :class:`EvaluationReport` is what :func:`lorun_peft.evaluation.evaluate_items` returns: one
:class:`ItemResult` per test image or cube, the averages the field reports (mean over the test set), the
protocol used (e.g. "CS: gray PSNR on [0, 255] ...") and, with ``stagewise=True``, the PSNR of every
stage estimate ``x_1 .. x_K``. :meth:`EvaluationReport.save` writes ``metrics.csv`` and ``metrics.json``
(and ``stagewise.csv`` + ``stagewise.png``) atomically, so a script or the ``lorun`` CLI only calls it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorun_peft.io import write_atomic

__all__ = ["EvaluationReport", "ItemResult", "write_atomic"]


@dataclass
class ItemResult:
    """Scores of one test image or cube; ``stage_psnr`` holds the K stage-wise values when measured."""

    name: str
    psnr: float
    ssim: float
    shape: tuple[int, ...]
    stage_psnr: list[float] | None = None


@dataclass
class EvaluationReport:
    """Per-item results, their averages and the protocol; see the module docstring."""

    task: str
    protocol: str
    items: list[ItemResult] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_psnr(self) -> float:
        """Average PSNR over the items (dB)."""
        return _mean([item.psnr for item in self.items])

    @property
    def mean_ssim(self) -> float:
        """Average SSIM over the items."""
        return _mean([item.ssim for item in self.items])

    @property
    def stage_psnr(self) -> list[float] | None:
        """Average PSNR of each stage estimate ``x_1 .. x_K`` (``None`` unless measured)."""
        curves = [item.stage_psnr for item in self.items]
        if not curves or any(curve is None for curve in curves):
            return None
        return [_mean(list(values)) for values in zip(*curves)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: task, protocol, metadata, items, averages and the stage-wise curve."""
        return {
            "task": self.task,
            "protocol": self.protocol,
            "metadata": self.metadata,
            "items": [asdict(item) | {"shape": list(item.shape)} for item in self.items],
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "stage_psnr": self.stage_psnr,
        }

    def format_table(self) -> str:
        """The per-item table and the average as aligned text."""
        width = max([len("average"), *(len(item.name) for item in self.items)])
        lines = [f"{'image':<{width}}  {'PSNR (dB)':>9}  {'SSIM':>6}", "-" * (width + 19)]
        lines += [f"{item.name:<{width}}  {item.psnr:>9.2f}  {item.ssim:>6.4f}" for item in self.items]
        lines += ["-" * (width + 19), f"{'average':<{width}}  {self.mean_psnr:>9.2f}  {self.mean_ssim:>6.4f}"]
        stage = self.stage_psnr
        if stage is not None:
            lines.append("stage-wise PSNR: " + " ".join(f"{v:.2f}" for v in stage))
        return "\n".join(lines)

    def csv_text(self) -> str:
        """``name,psnr,ssim,shape`` rows and a final ``average`` row."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["name", "psnr", "ssim", "shape"])
        for item in self.items:
            writer.writerow(
                [item.name, f"{item.psnr:.4f}", f"{item.ssim:.6f}", "x".join(map(str, item.shape))]
            )
        writer.writerow(["average", f"{self.mean_psnr:.4f}", f"{self.mean_ssim:.6f}", ""])
        return buffer.getvalue()

    def stagewise_csv_text(self) -> str:
        """``stage,mean_psnr,<item>...`` with one row per stage (1-based)."""
        stage = self.stage_psnr
        if stage is None:
            raise ValueError("this report has no stage-wise PSNR; evaluate with stagewise=True")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["stage", "mean_psnr", *(item.name for item in self.items)])
        for k, mean in enumerate(stage):
            writer.writerow([k + 1, f"{mean:.4f}", *(f"{item.stage_psnr[k]:.4f}" for item in self.items)])
        return buffer.getvalue()

    def plot_stagewise(self, path: str | os.PathLike) -> Path:
        """Stage-wise PSNR curve (mean in bold, one thin line per item) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stage = self.stage_psnr
        if stage is None:
            raise ValueError("this report has no stage-wise PSNR; evaluate with stagewise=True")
        stages = list(range(1, len(stage) + 1))
        figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
        for item in self.items:
            axes.plot(stages, item.stage_psnr, color="0.75", linewidth=0.8)
        axes.plot(stages, stage, color="C0", linewidth=2, marker="o", label="mean")
        axes.set_xlabel("stage k")
        axes.set_ylabel("PSNR (dB)")
        axes.set_title(f"{self.task.upper()}: stage-wise PSNR")
        axes.set_xticks(stages)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        return write_atomic(path, buffer.getvalue())

    def save(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``metrics.csv``, ``metrics.json`` (+ ``stagewise.csv``, ``stagewise.png``); return paths."""
        output_dir = Path(output_dir)
        paths = {
            "csv": write_atomic(output_dir / "metrics.csv", self.csv_text()),
            "json": write_atomic(output_dir / "metrics.json", json.dumps(self.to_dict(), indent=2)),
        }
        if self.stage_psnr is not None:
            paths["stagewise_csv"] = write_atomic(output_dir / "stagewise.csv", self.stagewise_csv_text())
            paths["stagewise_png"] = self.plot_stagewise(output_dir / "stagewise.png")
        return paths


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan

"""Gaussian denoising (``A = I``): the denoiser alone through the unfolding loop, gray or RGB.

A task mode is a noise level (set ``sigma-25`` trains and scores at noise std 25/255).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from lorun_peft import metrics

from .base import ImageTask, Metric

__all__ = ["DenoisingArguments", "DenoisingTask"]


@dataclass
class DenoisingArguments:
    """Noise level of the task mode and the image channels."""

    sigma: float = field(default=25.0, metadata={"help": "Denoising: noise std on the 0-255 scale."})
    channels: int = field(default=1, metadata={"help": "Denoising: 1 (gray) or 3 (RGB) images."})

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"--channels must be 1 or 3, got {self.channels}")
        if not 0 <= self.sigma < 255:
            raise ValueError(f"--sigma must be in [0, 255), got {self.sigma}")


class DenoisingTask(ImageTask):
    name = "denoising"
    label = "denoising"
    title = "Gaussian denoising, A = I (sets sigma-XX: noise std XX/255)"
    arguments = DenoisingArguments
    algorithm = "hqs"
    protocol_label = "PSNR on [0, 1]"
    hub_tag = "image-denoising"
    protocol = "Denoising: PSNR/SSIM (Gaussian window) on [0, 1] with the estimate clipped to [0, 1]"
    train_data = "Train400"
    test_data = "Set11"
    physics_types = ("denoising",)
    default_set = None
    set_key = "sigma"
    recipe = (
        "--mode shared --sigma 25 --output_dir runs/denoising/backbone",
        "--mode lorun --backbone runs/denoising/backbone --sigma 50 --output_dir runs/denoising/sets/s50",
    )

    def channels(self, args: DenoisingArguments | None) -> int:
        return 1 if args is None else args.channels

    def build_physics(
        self,
        args: DenoisingArguments,
        patch_size: int,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> tuple[Any, str]:
        from lorun_peft.physics import Denoising

        return Denoising(), f"denoising, noise std {args.sigma:g}/255"

    def training_overrides(self, args: DenoisingArguments) -> dict[str, Any]:
        return {"noise_sigma": args.sigma / 255.0}

    def evaluation_options(
        self, args: DenoisingArguments, *, smoke: bool = False, data_dir: Any = None
    ) -> dict[str, Any]:
        return {"noise_sigma": args.sigma / 255.0}

    def set_name(self, args: DenoisingArguments) -> str:
        return f"sigma-{round(args.sigma)}"

    def describe_physics(self, config: dict[str, Any]) -> str:
        return "denoising (A = I)"

    def score(self, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
        restored = restored.clamp(0, 1)
        return float(metrics.psnr(restored, clean, data_range=1.0)), float(
            metrics.ssim(restored, clean, data_range=1.0)
        )

    def stage_metric(self, physics: Any) -> Metric:
        return lambda pred, target: metrics.psnr(pred, target, data_range=1.0)

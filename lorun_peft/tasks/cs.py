"""Block compressive sensing (gray images, learned or ISTA-Net ``Phi``), scored with the ISTA-Net protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from lorun_peft import metrics

from .base import ImageTask, Metric

__all__ = ["CSArguments", "CSTask", "cs_set_name"]


@dataclass
class CSArguments:
    """The CS degradation: sampling ratio and block, or a fixed ISTA-Net matrix."""

    ratio: float = field(default=0.25, metadata={"help": "CS: sampling ratio in (0, 1] (paper: 0.01-0.25)."})
    block_size: int = field(default=32, metadata={"help": "CS: block side b (32; 33 for ISTA-Net)."})
    phi_matrix: str | None = field(
        default=None,
        metadata={
            "help": "CS: a fixed ISTA-Net sampling matrix phi_0_{R}_1089.mat (sets block 33 and the "
            "ratio); default: a learned Phi (the paper's setting)."
        },
    )
    phi_init: str = field(
        default="backbone",
        metadata={
            "help": "CS phase 2 at a new ratio: backbone (the new learned Phi starts from the backbone's, "
            "via its SVD: lorun_peft.physics.derive_sampling_matrix) | random (N(0, 1/b^2) entries)."
        },
    )

    def __post_init__(self) -> None:
        if self.phi_init not in ("backbone", "random"):
            raise ValueError(f"--phi_init must be one of ('backbone', 'random'), got {self.phi_init!r}")


def cs_set_name(ratio: float) -> str:
    """``ratio-25`` for 0.25 (or 25: values above 1 are percent); whole percentages only."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ValueError(f"CS ratio must be a number in (0, 1] (or a percentage), got {ratio!r}")
    percent = ratio * 100 if ratio <= 1 else ratio
    if not 0 < percent <= 100:
        raise ValueError(f"CS ratio must be in (0, 1] (or a percentage in (0, 100]), got {ratio!r}")
    if abs(percent - round(percent)) > 1e-6:
        raise ValueError(f"CS ratio {ratio!r} is not a whole percentage; pass the set name instead")
    return f"ratio-{round(percent)}"


def _percent(value: float) -> str:
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text} %"


class CSTask(ImageTask):
    name = "cs"
    label = "CS"
    title = "block compressive sensing, gray, learned Phi (sets ratio-XX)"
    arguments = CSArguments
    algorithm = "pgd"
    protocol_label = "CS protocol"
    hub_tag = "compressive-sensing"
    protocol = (
        "CS (ISTA-Net): gray PSNR on [0, 255] with the estimate clipped to [0, 1]; SSIM 7x7 uniform window"
    )
    train_data = "Train400"
    test_data = "Set11"
    physics_types = ("block_cs",)
    image_channels = 1
    smoke_patch_size = 32
    default_set = "ratio-25"
    set_key = "ratio"
    recipe = (
        "--mode shared --ratio 0.25 --output_dir runs/cs/backbone",
        "--mode lorun --backbone runs/cs/backbone --ratio 0.25 --output_dir runs/cs/sets/r25",
        "--mode lorun --backbone runs/cs/backbone --ratio 0.10 --output_dir runs/cs/sets/r10",
        "--mode lorun --backbone runs/cs/backbone --ratio 0.50 --output_dir runs/cs/sets/r50",
    )

    def build_physics(
        self, args: CSArguments, patch_size: int, *, smoke: bool = False, seed: int = 0, data_dir: Any = None
    ) -> tuple[Any, str]:
        """:class:`~lorun_peft.physics.BlockCS` with a learned Phi, or the fixed ISTA-Net matrix."""
        from lorun_peft.physics import BlockCS, load_ista_net_matrix

        if args.phi_matrix:
            physics = load_ista_net_matrix(args.phi_matrix)
            return physics, f"block CS {physics.ratio:.0%}, fixed Phi from {args.phi_matrix}"
        physics = BlockCS(args.ratio, block_size=args.block_size, channels=1, learnable=True)
        return physics, f"block CS {args.ratio:.0%}, {args.block_size}x{args.block_size}, learned Phi"

    def set_name(self, args: CSArguments) -> str:
        return cs_set_name(args.ratio)

    def describe_physics(self, config: dict[str, Any]) -> str:
        b = config["block_size"]
        phi = "learned" if config.get("learnable") else "fixed"
        return (
            f"block CS, ratio {_percent(config['ratio'])} ({config['num_rows']} rows x {b * b}, "
            f"{b}x{b} blocks), {config['channels']} channel(s), {phi} Phi"
        )

    def start_phase2(
        self, physics: Any, backbone_physics: Any, args: CSArguments, model_args: Any, seed: int
    ) -> bool:
        """Keep the backbone's Phi at its own ratio; else start the new Phi from it (``--phi_init``)."""
        import torch

        from lorun_peft.physics import BlockCS, derive_sampling_matrix

        if physics.get_config() == backbone_physics.get_config():
            return True
        if args.phi_init != "backbone" or not (
            isinstance(physics, BlockCS) and physics.learnable and isinstance(backbone_physics, BlockCS)
        ):
            return False  # a fixed matrix (--phi_matrix) is used as given
        if backbone_physics.block_size != physics.block_size:
            raise ValueError(
                f"--phi_init backbone needs the backbone's block size ({backbone_physics.block_size}), got "
                f"--block_size {physics.block_size}; use --phi_init random"
            )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            physics.Phi.copy_(derive_sampling_matrix(backbone_physics.Phi, physics.num_rows, generator))
        return False

    def score(self, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
        restored = restored.clamp(0, 1)
        return float(metrics.cs_psnr(restored, clean)), float(metrics.cs_ssim(restored, clean))

    def stage_metric(self, physics: Any) -> Metric:
        if physics.get_config().get("channels", 1) == 1:
            return metrics.cs_psnr
        return lambda pred, target: metrics.psnr(pred, target, data_range=1.0)

"""Pixel inpainting with random masks (gray images), a task that runs through the operator protocol.

The operator is :class:`~lorun_peft.physics.PixelInpainting`, a plain class wrapped by
:func:`~lorun_peft.physics.as_operator` (its HQS step is its own closed-form ``prox_l2``). The mask is
part of each measurement: training draws a new one per batch, evaluation one per test image seeded by
``(seed, index)``, and ``lorun restore --mask`` reads the user's. A task mode is a missing-pixel rate
(set ``missing-70``: 70 % of the pixels are unknown). Scores use the CS protocol's gray PSNR/SSIM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorun_peft import metrics
from lorun_peft.physics.inpainting import INPAINTING_FACTORY, pixel_inpainting

from .base import ImageTask, Metric

__all__ = [
    "InpaintingArguments",
    "InpaintingTask",
    "RandomPixelMasks",
    "harmonic_inpainting",
    "inpainting_set_name",
]


@dataclass
class InpaintingArguments:
    """The inpainting degradation: the share of pixels a random mask drops."""

    missing: float = field(
        default=0.7,
        metadata={"help": "Inpainting: fraction of pixels missing in [0, 1) (a new random mask per batch)."},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.missing < 1.0:
            raise ValueError(f"--missing must be a fraction in [0, 1), got {self.missing}")


def inpainting_set_name(missing: float) -> str:
    """``missing-70`` for 0.7 (or 70: values above 1 are percent); whole percentages only."""
    if isinstance(missing, bool) or not isinstance(missing, (int, float)):
        raise ValueError(f"missing rate must be a number in [0, 1) (or a percentage), got {missing!r}")
    percent = missing * 100 if missing < 1 else missing
    if not 0 <= percent < 100 or abs(percent - round(percent)) > 1e-6:
        raise ValueError(f"missing rate must be a whole percentage in [0, 100), got {missing!r}")
    return f"missing-{round(percent)}"


def _graph_laplacian(x: Tensor) -> Tensor:
    """``L x`` for the 4-neighbour graph Laplacian of the pixel grid (free boundary), per channel."""
    out = torch.zeros_like(x)
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    out[..., :, 1:] += dx
    out[..., :, :-1] -= dx
    out[..., 1:, :] += dy
    out[..., :-1, :] -= dy
    return out


def harmonic_inpainting(y: Tensor, mask: Tensor, tol: float = 1e-6, max_iter: int = 3000) -> Tensor:
    """The classical baseline: missing pixels solve Laplace's equation with the seen ones as boundary values.

    Minimises the sum of squared differences between neighbouring pixels with the observed pixels
    fixed, i.e. solves ``L_uu x_u = -L_uo y_o`` (``L`` the 4-neighbour graph Laplacian) by conjugate
    gradients. ``y``: ``(B, C, H, W)`` measurement ``M * x``; ``mask``: 1 where seen, broadcastable to ``y``.
    """
    from lorun_peft.physics import conjugate_gradient

    mask = mask.to(y.dtype).expand_as(y)
    unknown = 1 - mask
    seen = y * mask
    mean = seen.sum(dim=(-2, -1), keepdim=True) / mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    rhs = seen - unknown * _graph_laplacian(seen)
    x0 = seen + unknown * mean
    return conjugate_gradient(
        lambda v: mask * v + unknown * _graph_laplacian(unknown * v), rhs, x0, tol=tol, max_iter=max_iter
    )


class RandomPixelMasks:
    """A ``physics_sampler``: a new random ``size x size`` mask in the inpainting operator per batch."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, physics: Any, generator: torch.Generator) -> None:
        operator = getattr(physics, "operator", None)
        if not hasattr(operator, "draw_mask"):
            raise ValueError(f"RandomPixelMasks needs the wrapped PixelInpainting operator, got {physics!r}")
        operator.set_mask(operator.draw_mask(self.size, self.size, generator))


class InpaintingTask(ImageTask):
    name = "inpainting"
    label = "inpainting"
    title = "pixel inpainting with random masks, gray (sets missing-XX: XX % of the pixels unknown)"
    arguments = InpaintingArguments
    algorithm = "hqs"
    protocol_label = "inpainting: CS protocol metrics"
    hub_tag = "image-inpainting"
    protocol = (
        "Inpainting: a random mask per image seeded by (seed, index); gray PSNR on [0, 255] with the "
        "estimate "
        "clipped to [0, 1] and SSIM 7x7 uniform window (the CS protocol's metrics)"
    )
    train_data = "Train400"
    test_data = "Set11"
    image_channels = 1
    smoke_patch_size = 32
    default_set = "missing-70"
    set_key = "missing"
    recipe = (
        "--mode shared --missing 0.7 --output_dir runs/inpainting/backbone",
        "--mode lorun --backbone runs/inpainting/backbone --missing 0.7 --output_dir runs/inpainting/m70",
        "--mode lorun --backbone runs/inpainting/backbone --missing 0.9 --output_dir runs/inpainting/m90",
    )

    def owns(self, config: dict[str, Any]) -> bool:
        return config.get("type") == "wrapped" and config.get("factory") == INPAINTING_FACTORY

    def build_physics(
        self,
        args: InpaintingArguments,
        patch_size: int,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> tuple[Any, str]:
        physics = pixel_inpainting(args.missing)
        physics.operator.set_mask(
            physics.operator.draw_mask(patch_size, patch_size, torch.Generator().manual_seed(seed))
        )
        return (
            physics,
            f"pixel inpainting, {args.missing:.0%} of the pixels missing (a new random mask per batch)",
        )

    def physics_sampler(
        self,
        args: InpaintingArguments,
        patch_size: int,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> RandomPixelMasks:
        return RandomPixelMasks(patch_size)

    def set_name(self, args: InpaintingArguments) -> str:
        return inpainting_set_name(args.missing)

    def describe_physics(self, config: dict[str, Any]) -> str:
        missing = float(config.get("args", {}).get("missing", 0.0))
        return f"pixel inpainting, {missing:.0%} of the pixels missing (random mask per image)"

    @contextlib.contextmanager
    def evaluation_physics(
        self,
        model: Any,
        shape: tuple[int, ...],
        *,
        index: int = 0,
        seed: int = 0,
        mask: Tensor | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """The active operator with this item's mask: ``mask``, else a random one seeded by ``(seed, index)``.

        The operator's previous mask is put back on exit.
        """
        from lorun_peft.training import derive_seed

        physics = model.physics
        operator = physics.operator
        previous = operator.mask
        if mask is None:
            generator = torch.Generator().manual_seed(derive_seed(seed, 0, 0, index, "mask"))
            mask = operator.draw_mask(shape[-2], shape[-1], generator)
        elif tuple(mask.shape[-2:]) != tuple(shape[-2:]):
            raise ValueError(
                f"the mask is {tuple(mask.shape[-2:])[0]}x{mask.shape[-1]}, the image "
                f"{shape[-2]}x{shape[-1]}; expected one mask value per pixel"
            )
        operator.set_mask(mask)
        try:
            yield physics
        finally:
            operator.mask = previous

    def read_mask(self, path: Path) -> Tensor:
        """A mask image (PNG ...: nonzero = observed) or ``.npy`` array, as a 0/1 ``(H, W)`` tensor."""
        import numpy as np

        from lorun_peft.data.images import image_to_tensor

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--mask {path} does not exist (expected a PNG or .npy mask)")
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except ValueError as error:
                raise ValueError(f"cannot read mask {path}: {error}") from error
            mask = torch.as_tensor(np.asarray(array, dtype=np.float32))
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as handle:
                    mask = image_to_tensor(handle, 1)[0]
            except UnidentifiedImageError as error:
                raise ValueError(f"cannot decode mask image {path}: {error}") from error
        if mask.ndim != 2:
            raise ValueError(f"mask {path} has shape {tuple(mask.shape)}; expected (H, W)")
        return (mask > 0).float()

    def score(self, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
        restored = restored.clamp(0, 1)
        return float(metrics.cs_psnr(restored, clean)), float(metrics.cs_ssim(restored, clean))

    def stage_metric(self, physics: Any) -> Metric:
        return metrics.cs_psnr

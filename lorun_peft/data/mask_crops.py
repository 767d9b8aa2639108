"""Fresh random crops of a large CASSI coded aperture during training.

Training on ``P x P`` patches needs a ``P x P`` mask. One fixed crop lets the denoiser learn that crop's
code pattern, and the model then meets a different pattern on the full mask at test time. A
:class:`RandomMaskCrops` given to :func:`lorun_peft.training.train` as ``physics_sampler`` writes a new
random crop of the full mask into the operator before every batch. The crop position comes from the
generator that ``train`` seeds with ``(seed, step, micro-batch)`` only, not the process rank, so every DDP
process measures with the same mask (DDP broadcasts buffers from rank 0 anyway) and a resumed run
draws the same crops as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .transforms import PatchSize, patch_shape

__all__ = ["RandomMaskCrops"]


class RandomMaskCrops:
    """Write a random ``size x size`` (or ``size = (h, w)``) crop of ``mask`` into a CASSI operator's mask.

    Args:
        mask: the full coded aperture, e.g. the 256x256 TSA simulation mask or the 660x660 real one.
        size: crop side, or ``(height, width)`` (a strip); must fit inside ``mask``.
    """

    def __init__(self, mask: Tensor, size: PatchSize) -> None:
        if not isinstance(mask, Tensor) or mask.ndim != 2:
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a 2-D (H, W) tensor, got {shape}")
        height, width = mask.shape
        try:
            crop_height, crop_width = patch_shape(size)
        except ValueError:
            crop_height = crop_width = 0
        if not (1 <= crop_height <= height and 1 <= crop_width <= width):
            raise ValueError(
                f"crop size must be an integer in [1, {min(height, width)}] or a (height, width) pair within "
                f"{height}x{width} for the {height}x{width} mask, got {size!r}"
            )
        self.mask = mask.detach().float().cpu()
        self.shape = (crop_height, crop_width)
        self.size: PatchSize = crop_height if crop_height == crop_width else self.shape

    @property
    def positions(self) -> int:
        """Number of distinct crop positions."""
        height, width = self.mask.shape
        return (height - self.shape[0] + 1) * (width - self.shape[1] + 1)

    def crop(self, generator: torch.Generator) -> Tensor:
        """A random crop (top-left corner uniform over all positions)."""
        (height, width), (crop_height, crop_width) = self.mask.shape, self.shape
        top = int(torch.randint(height - crop_height + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_width + 1, (1,), generator=generator))
        return self.mask[top : top + crop_height, left : left + crop_width]

    def __call__(self, physics: torch.nn.Module, generator: torch.Generator) -> None:
        """Copy a new crop into ``physics.mask`` in place (shape, dtype and device are kept)."""
        target = getattr(physics, "mask", None)
        if not isinstance(target, Tensor) or tuple(target.shape) != self.shape:
            shape = tuple(target.shape) if isinstance(target, Tensor) else None
            raise ValueError(
                f"RandomMaskCrops({self.size}) needs a CASSI operator with a "
                f"{self.shape[0]}x{self.shape[1]} mask, "
                f"got {type(physics).__name__} with mask shape {shape}"
            )
        with torch.no_grad():
            target.copy_(self.crop(generator))

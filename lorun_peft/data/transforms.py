"""Patch sampling and the eight flip/rotation augmentations shared by every loader.

Training patches for all three tasks (CS, SR, CASSI) are random crops with one of the eight
symmetries of the square (the dihedral group: 4 rotations x optional flip), the augmentation
used by DnCNN, USRNet, MST and DAUHST. Randomness comes from a ``numpy.random.Generator`` that the
caller derives from ``(seed, epoch, index)``, so a patch depends only on its index and never on
worker order or timing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["NUM_DIHEDRAL", "dihedral", "patch_rng", "random_crop"]

#: Number of distinct flip/rotation transforms of a square patch.
NUM_DIHEDRAL = 8


def dihedral(x: Tensor, index: int) -> Tensor:
    """Apply transform ``index`` in 0..7 to the last two dims of ``(..., H, W)``.

    ``index % 4`` counter-clockwise quarter turns, then a left-right flip when ``index >= 4``.
    ``index = 0`` is the identity.
    """
    if not 0 <= index < NUM_DIHEDRAL:
        raise ValueError(f"dihedral index must be in 0..{NUM_DIHEDRAL - 1}, got {index}")
    x = torch.rot90(x, k=index % 4, dims=(-2, -1))
    if index >= 4:
        x = torch.flip(x, dims=(-1,))
    return x


def patch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Independent generator for one sample, from ``(seed, epoch, index)`` only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def random_crop(x: Tensor, size: int, rng: np.random.Generator, *, name: str = "image") -> Tensor:
    """Uniformly placed ``size x size`` crop of ``(..., H, W)``.

    Raises:
        ValueError: the image is smaller than the crop; the message names ``name``.
    """
    height, width = x.shape[-2:]
    if size > height or size > width:
        raise ValueError(
            f"patch size {size} is larger than {name} ({height}x{width}); use a smaller patch_size"
        )
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return x[..., top : top + size, left : left + size]

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

__all__ = [
    "NUM_DIHEDRAL",
    "PatchSize",
    "augment_patch",
    "dihedral",
    "patch_rng",
    "patch_shape",
    "random_crop",
]

#: Number of distinct flip/rotation transforms of a square patch.
NUM_DIHEDRAL = 8
#: The transforms among them that keep a non-square patch's shape: identity, half turn and the two flips.
SHAPE_KEEPING = (0, 2, 4, 6)

#: A patch side (square) or ``(height, width)``.
PatchSize = int | tuple[int, int]


def patch_shape(size: PatchSize) -> tuple[int, int]:
    """``(height, width)`` of a patch size given as one side or as a pair; both must be >= 1."""
    shape = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise ValueError(
            f"patch size must be a positive integer or a (height, width) pair of them, got {size!r}"
        )
    return int(shape[0]), int(shape[1])


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


def random_crop(x: Tensor, size: PatchSize, rng: np.random.Generator, *, name: str = "image") -> Tensor:
    """Uniformly placed crop of ``(..., H, W)``: ``size x size``, or ``size = (height, width)``.

    Raises:
        ValueError: the image is smaller than the crop; the message names ``name``.
    """
    crop_height, crop_width = patch_shape(size)
    height, width = x.shape[-2:]
    if crop_height > height or crop_width > width:
        shown = crop_height if crop_height == crop_width else f"{crop_height}x{crop_width}"
        raise ValueError(
            f"patch size {shown} is larger than {name} ({height}x{width}); use a smaller patch_size"
        )
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    return x[..., top : top + crop_height, left : left + crop_width]


def augment_patch(patch: Tensor, rng: np.random.Generator) -> Tensor:
    """One random flip/rotation of ``patch``: any of the 8 for a square, a shape-keeping one otherwise.

    A non-square patch (a CASSI strip) keeps its orientation, which the dispersion direction fixes:
    identity, half turn, left-right or up-down flip, each with probability 1/4.
    """
    if patch.shape[-2] == patch.shape[-1]:
        return dihedral(patch, int(rng.integers(NUM_DIHEDRAL)))
    return dihedral(patch, SHAPE_KEEPING[int(rng.integers(len(SHAPE_KEEPING)))])

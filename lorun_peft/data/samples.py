"""Real sample images shipped inside the package, for examples and offline tests.

Seven CC0 / public-domain photographs and textures from scikit-image's sample data live in
``lorun_peft/assets/images`` (licences in ``LICENSES.md`` there). They give tests and demos real
image statistics (edges, textures, smooth areas) without any download, unlike random noise.
They are not a benchmark; use Set11 / Set5 / KAIST with the protocols of ``lorun_peft.metrics``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .transforms import dihedral, random_crop

__all__ = ["list_sample_images", "load_sample_image", "sample_image_path", "sample_patches"]


def _image_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "images"


def list_sample_images() -> list[str]:
    """Names of the shipped images, sorted (e.g. ``["astronaut", "brick", "camera", ...]``)."""
    return sorted(p.stem for p in _image_dir().glob("*.png"))


def sample_image_path(name: str) -> Path:
    """Path of a shipped image file."""
    names = list_sample_images()
    if name not in names:
        raise ValueError(f"unknown sample image {name!r}; expected one of {names}")
    return _image_dir() / f"{name}.png"


@lru_cache(maxsize=32)
def _decoded(name: str, mode: str) -> np.ndarray:
    with Image.open(sample_image_path(name)) as img:
        array = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def load_sample_image(name: str, mode: Literal["L", "RGB"] = "L") -> Tensor:
    """Load a shipped image as float32 ``(C, H, W)`` in [0, 1] (C = 1 for ``"L"``, 3 for ``"RGB"``).

    Colour images are converted to gray with Pillow's ITU-R 601-2 luma; gray images become RGB by
    repeating the channel.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (gray) or 'RGB', got {mode!r}")
    return torch.from_numpy(_decoded(name, mode).copy())


def sample_patches(
    num: int,
    size: int,
    channels: int = 1,
    generator: torch.Generator | None = None,
    *,
    names: list[str] | None = None,
    augment: bool = True,
) -> Tensor:
    """Random real-image patches ``(num, channels, size, size)``, float32 in [0, 1].

    Each patch picks a shipped image, a crop position and (with ``augment``) one of the eight
    flips/rotations. Draws come from ``generator`` (a ``torch.Generator``), so a seeded generator
    gives the same patches every time.

    Args:
        num: number of patches.
        size: side of the square patches; at most 300 (the smallest image side) when all images
            are used.
        channels: 1 (gray) or 3 (RGB).
        generator: source of randomness; ``None`` uses torch's global generator.
        names: restrict to these images (default: all).
        augment: apply a random flip/rotation.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if num < 1 or size < 1:
        raise ValueError(f"num and size must be positive, got num={num}, size={size}")
    names = list_sample_images() if names is None else list(names)
    if not names:
        raise ValueError("names is empty; expected at least one sample image name")
    images = [load_sample_image(n, "L" if channels == 1 else "RGB") for n in names]
    # One integer seed from the torch generator keeps the public API torch-only and reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(num):
        pick = int(rng.integers(len(images)))
        patch = random_crop(images[pick], size, rng, name=f"sample image {names[pick]!r}")
        if augment:
            patch = dihedral(patch, int(rng.integers(8)))
        patches.append(patch)
    return torch.stack(patches).contiguous()

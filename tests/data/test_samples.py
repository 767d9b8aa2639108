"""Shipped sample images and the shared crop / flip-rotation helpers."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorun_peft.data import samples
from lorun_peft.data.transforms import NUM_DIHEDRAL, dihedral, patch_rng, random_crop


def test_every_shipped_image_is_listed_with_a_licence_and_checksum() -> None:
    names = samples.list_sample_images()
    assert {"camera", "astronaut", "brick", "grass", "gravel"} <= set(names)
    folder = samples.sample_image_path("camera").parent
    licences = (folder / "LICENSES.md").read_text()
    total = 0
    for name in names:
        path = samples.sample_image_path(name)
        total += path.stat().st_size
        row = next(line for line in licences.splitlines() if line.startswith(f"| `{name}.png`"))
        assert re.search(r"CC0|public domain", row), f"{name}: licence not CC0 / public domain"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in row or "same (already optimal)" in row, f"{name}: checksum not recorded"
    assert total < 2_000_000


@pytest.mark.parametrize(
    ("name", "mode", "shape"), [("camera", "L", (1, 512, 512)), ("chelsea", "RGB", (3, 300, 451))]
)
def test_load_sample_image_shape_range_and_pixels(name: str, mode: str, shape: tuple[int, ...]) -> None:
    img = samples.load_sample_image(name, mode)
    assert img.shape == shape and img.dtype == torch.float32
    with Image.open(samples.sample_image_path(name)) as pil:
        expected = np.asarray(pil.convert(mode), dtype=np.float32) / 255
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert np.array_equal(img.numpy(), expected)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0 and float(img.std()) > 0.05  # a real photo
    img.zero_()  # callers get their own copy
    assert float(samples.load_sample_image(name, mode).max()) > 0


def test_load_sample_image_rejects_unknown_names_and_modes() -> None:
    with pytest.raises(ValueError, match="unknown sample image 'lena'"):
        samples.load_sample_image("lena")
    with pytest.raises(ValueError, match="unknown sample image"):
        samples.load_sample_image("../images/camera")
    with pytest.raises(ValueError, match="mode must be"):
        samples.load_sample_image("camera", "CMYK")


def test_sample_patches_are_reproducible_real_crops() -> None:
    first = samples.sample_patches(6, 32, 3, torch.Generator().manual_seed(7))
    again = samples.sample_patches(6, 32, 3, torch.Generator().manual_seed(7))
    other = samples.sample_patches(6, 32, 3, torch.Generator().manual_seed(8))
    assert first.shape == (6, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    gray = samples.sample_patches(4, 16, 1, torch.Generator().manual_seed(0), names=["camera"], augment=False)
    camera = samples.load_sample_image("camera")[0]
    windows = camera.unfold(0, 16, 1).unfold(1, 16, 1)  # every 16x16 crop of the image
    for patch in gray[:, 0]:
        assert (windows == patch).all(-1).all(-1).any(), "patch is not a crop of camera.png"
    with pytest.raises(ValueError, match="larger than sample image 'chelsea'"):
        samples.sample_patches(1, 400, 3, torch.Generator().manual_seed(0), names=["chelsea"])
    with pytest.raises(ValueError, match="channels"):
        samples.sample_patches(1, 8, 2)


def test_dihedral_gives_eight_distinct_invertible_transforms() -> None:
    x = torch.arange(12.0).view(1, 3, 4)
    square = torch.arange(16.0).view(1, 4, 4)
    outputs = [dihedral(square, k) for k in range(NUM_DIHEDRAL)]
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == NUM_DIHEDRAL
    assert torch.equal(dihedral(x, 0), x)
    assert dihedral(x, 1).shape == (1, 4, 3)
    assert torch.equal(dihedral(square, 4), square.flip(-1))
    assert torch.equal(dihedral(square, 1), torch.rot90(square, 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="0..7"):
        dihedral(square, 8)


def test_random_crop_and_patch_rng_are_deterministic() -> None:
    x = torch.arange(100.0).view(1, 10, 10)
    a = random_crop(x, 4, patch_rng(0, 0, 5))
    b = random_crop(x, 4, patch_rng(0, 0, 5))
    assert torch.equal(a, b) and a.shape == (1, 4, 4)
    crops = {tuple(random_crop(x, 4, patch_rng(0, e, 5)).flatten().tolist()) for e in range(10)}
    assert len(crops) > 1  # the epoch changes the draw
    with pytest.raises(ValueError, match=r"larger than thing.png \(10x10\)"):
        random_crop(x, 11, patch_rng(0, 0, 0), name="thing.png")


def test_assets_folder_is_package_data() -> None:
    folder = Path(samples.__file__).resolve().parents[1] / "assets" / "images"
    assert samples.sample_image_path("camera").parent == folder

"""Image folders through Hugging Face datasets, and random training patches."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lorun_peft.data import RandomPatchDataset, image_to_tensor, load_image_folder
from lorun_peft.data.samples import load_sample_image
from lorun_peft.data.transforms import dihedral


def _shared_data() -> Path:
    env = os.environ.get("LORUN_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    array = np.round(x.numpy() * 255).astype(np.uint8)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Real image content in every format the loaders must read, including a palette TIFF."""
    folder = tmp_path / "images"
    folder.mkdir()
    gray = _to_uint8(load_sample_image("camera")[:, :40, :48])
    rgb = _to_uint8(load_sample_image("chelsea", "RGB")[:, :36, :44])
    Image.fromarray(gray).save(folder / "a_gray.png")
    Image.fromarray(rgb).save(folder / "b_rgb.jpg", quality=95)
    Image.fromarray(rgb).save(folder / "c_rgb.bmp")
    palette = Image.fromarray(gray).convert("P", palette=Image.Palette.WEB)
    palette.putpalette([v for i in range(256) for v in (i, i, i)])  # identity gray ramp, like Set11
    palette.putdata(list(gray.flatten()))
    palette.save(folder / "d_palette.tif")
    Image.fromarray(gray).save(folder / "e_gray.tif")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_load_image_folder_reads_every_format_and_converts_modes(mixed_folder: Path, tmp_path: Path) -> None:
    ds = load_image_folder(mixed_folder, channels=1, cache_dir=tmp_path / "cache")
    assert isinstance(ds, datasets.Dataset) and len(ds) == 5
    images = [row["image"] for row in ds]
    assert all(img.mode == "L" for img in images)
    expected_gray = _to_uint8(load_sample_image("camera")[:, :40, :48])
    with Image.open(mixed_folder / "d_palette.tif") as raw:
        assert raw.mode == "P"
    assert np.array_equal(np.asarray(images[3]), expected_gray)  # palette TIFF -> the gray values
    assert np.array_equal(np.asarray(images[4]), expected_gray)
    rgb = load_image_folder(mixed_folder, channels=3, cache_dir=tmp_path / "cache")
    assert all(row["image"].mode == "RGB" for row in rgb)
    assert np.array_equal(
        np.asarray(rgb[2]["image"]), _to_uint8(load_sample_image("chelsea", "RGB")[:, :36, :44])
    )


def test_load_image_folder_errors_name_the_problem(mixed_folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=f"no image files in {empty}"):
        load_image_folder(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    two_splits = tmp_path / "two_splits"
    for split in ("train", "validation"):
        (two_splits / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(two_splits / split / "a.png")
    with pytest.raises(ValueError, match="split 'test' not found"):
        load_image_folder(two_splits, split="test", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="channels must be"):
        load_image_folder(mixed_folder, channels=2)
    (mixed_folder / "z_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ValueError, match=r"cannot decode image file .*z_broken\.png"):
        load_image_folder(mixed_folder, channels=1, cache_dir=tmp_path / "cache2")


def test_image_to_tensor_handles_8_and_16_bit() -> None:
    img16 = Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.uint16))
    t = image_to_tensor(img16)
    assert (
        t.shape == (1, 2, 2) and float(t.max()) == 1.0 and float(t[0, 1, 0]) == pytest.approx(32768 / 65535)
    )
    rgb = Image.fromarray(np.full((2, 3, 3), 51, dtype=np.uint8))
    assert torch.allclose(image_to_tensor(rgb), torch.full((3, 2, 3), 0.2))
    assert image_to_tensor(rgb, channels=1).shape == (1, 2, 3)


def _is_augmented_crop(patch: torch.Tensor, image: torch.Tensor, transforms: range) -> bool:
    size = patch.shape[-1]
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # (C, nH, nW, size, size)
    for k in transforms:
        # invert dihedral(k): flip back first (if any), then rotate back
        undone = patch.flip(-1) if k >= 4 else patch
        undone = torch.rot90(undone, -(k % 4), dims=(-2, -1))
        if (windows == undone[:, None, None]).flatten(-2).all(-1).all(0).any():
            return True
    return False


def test_random_patch_dataset_is_deterministic_and_returns_real_crops(
    mixed_folder: Path, tmp_path: Path
) -> None:
    ds = load_image_folder(mixed_folder, channels=3, cache_dir=tmp_path / "cache")
    patches = RandomPatchDataset(ds, patch_size=16, patches_per_image=3, seed=5)
    assert patches.channels == 3 and len(patches) == 15
    same = RandomPatchDataset(ds, patch_size=16, patches_per_image=3, seed=5, cache_images=True)
    other_seed = RandomPatchDataset(ds, patch_size=16, patches_per_image=3, seed=6)
    first = torch.stack([patches[i] for i in range(len(patches))])
    assert first.shape == (15, 3, 16, 16) and first.dtype == torch.float32
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    assert torch.equal(first, torch.stack([same[i] for i in range(len(same))]))
    assert not torch.equal(first, torch.stack([other_seed[i] for i in range(len(other_seed))]))
    assert torch.equal(patches[7], patches[7])  # order-independent
    patches.set_epoch(1)
    assert not torch.equal(first, torch.stack([patches[i] for i in range(len(patches))]))
    with Image.open(mixed_folder / "a_gray.png") as img:
        source = image_to_tensor(img, channels=3)
    for i in range(3):  # items 0..2 come from the first image, under one of the 8 transforms
        assert _is_augmented_crop(patches[i], source, range(8))
    batch = next(iter(DataLoader(patches, batch_size=4, shuffle=False)))
    assert batch.shape == (4, 3, 16, 16)


def test_random_patch_dataset_without_augmentation_and_from_tensors() -> None:
    images = [load_sample_image("brick")[:, :40, :50], load_sample_image("grass")[:, :30, :30]]
    plain = RandomPatchDataset(images, patch_size=12, patches_per_image=4, augment=False, seed=1)
    assert plain.channels == 1 and len(plain) == 8
    for i in range(len(plain)):
        assert _is_augmented_crop(plain[i], images[i // 4], range(1))  # identity only
    augmented = RandomPatchDataset(images, patch_size=12, patches_per_image=4, seed=1)
    transformed = [
        not _is_augmented_crop(augmented[i], images[i // 4], range(1)) for i in range(len(augmented))
    ]
    assert any(transformed)  # some patches were flipped/rotated
    assert torch.equal(dihedral(images[0], 0), images[0])


def test_random_patch_dataset_errors(mixed_folder: Path, tmp_path: Path) -> None:
    ds = load_image_folder(mixed_folder, channels=1, cache_dir=tmp_path / "cache")
    too_big = RandomPatchDataset(ds, patch_size=38)  # a_gray is 48x40 (fits), b_rgb.jpg is 44x36
    assert too_big[0].shape == (1, 38, 38)
    with pytest.raises(ValueError, match=r"patch size 38 is larger than image file .*b_rgb\.jpg \(36x44\)"):
        too_big[1]
    native = load_image_folder(mixed_folder, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="pass channels=1 or 3"):
        RandomPatchDataset(native, patch_size=8)
    assert RandomPatchDataset(native, patch_size=8, channels=3)[3].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="different channel counts"):
        RandomPatchDataset([torch.rand(1, 8, 8), torch.rand(3, 8, 8)], patch_size=4)
    with pytest.raises(ValueError, match="no images"):
        RandomPatchDataset([], patch_size=4)
    with pytest.raises(IndexError):
        RandomPatchDataset([torch.rand(1, 8, 8)], patch_size=4)[1]


def test_set11_folder_loads_as_gray(tmp_path: Path) -> None:
    folder = _shared_data() / "Set11"
    if not folder.is_dir():
        pytest.skip(f"Set11 not found at {folder} (set LORUN_DATA_DIR)")
    ds = load_image_folder(folder, channels=1, cache_dir=tmp_path / "cache")
    assert len(ds) == 11
    for row in ds:
        img = row["image"]
        assert img.mode == "L" and img.size in ((256, 256), (512, 512))
    paths = [row["image"]["path"] for row in ds.cast_column("image", datasets.Image(decode=False))]
    parrots = next(i for i, path in enumerate(paths) if path.endswith("Parrots.tif"))
    with Image.open(folder / "Parrots.tif") as raw:
        assert raw.mode == "P"
        assert np.array_equal(np.asarray(ds[parrots]["image"]), np.asarray(raw.convert("L")))
    patches = RandomPatchDataset(ds, patch_size=33, patches_per_image=2, seed=0)
    assert patches[21].shape == (1, 33, 33)


def test_flat_folder_is_read_whatever_datasets_names_its_split(tmp_path):
    # Train400's files are named test_001.png ...: datasets calls that flat folder's split "test".
    folder = tmp_path / "Train400"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.full((8, 8), 40 * index, dtype=np.uint8)).save(folder / f"test_{index:03d}.png")
    dataset = load_image_folder(folder, split="train", channels=1, cache_dir=tmp_path / "cache")
    assert len(dataset) == 3

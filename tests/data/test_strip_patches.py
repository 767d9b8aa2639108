"""Non-square training crops (CASSI's full-width strips): crops, augmentation, datasets, mask crops."""

from __future__ import annotations

import pytest
import torch

from lorun_peft.data import RandomMaskCrops
from lorun_peft.data.cubes import CubePatchDataset
from lorun_peft.data.images import RandomPatchDataset
from lorun_peft.data.transforms import (
    NUM_DIHEDRAL,
    augment_patch,
    dihedral,
    patch_rng,
    patch_shape,
    random_crop,
)
from lorun_peft.physics import CASSI
from lorun_peft.tasks.cassi_inputs import crop_mask


def test_patch_shape_takes_a_side_or_a_pair_and_rejects_the_rest() -> None:
    assert patch_shape(8) == (8, 8) and patch_shape((4, 16)) == (4, 16)
    for bad in (0, (4,), (4, 0), (4.0, 8), True, "8"):
        with pytest.raises(ValueError, match="patch size must be a positive integer"):
            patch_shape(bad)


def test_a_strip_crop_is_a_piece_of_the_image_at_its_shape() -> None:
    x = torch.arange(20 * 30, dtype=torch.float32).view(1, 20, 30)
    crop = random_crop(x, (4, 25), patch_rng(0, 0, 1))
    assert crop.shape == (1, 4, 25)
    top, left = divmod(int(crop[0, 0, 0]), 30)
    assert torch.equal(crop, x[:, top : top + 4, left : left + 25])
    with pytest.raises(ValueError, match=r"patch size 4x31 is larger than thing.png \(20x30\)"):
        random_crop(x, (4, 31), patch_rng(0, 0, 0), name="thing.png")


def test_strips_keep_their_shape_and_get_all_four_shape_keeping_symmetries() -> None:
    strip = torch.rand(2, 3, 7)
    seen = set()
    for index in range(64):
        out = augment_patch(strip, patch_rng(0, 0, index))
        assert out.shape == strip.shape
        seen.update(
            k
            for k in range(NUM_DIHEDRAL)
            if dihedral(strip, k).shape == strip.shape and torch.equal(out, dihedral(strip, k))
        )
    assert seen == {0, 2, 4, 6}  # identity, half turn, left-right flip, up-down flip (= flip + half turn)


def test_square_patches_draw_the_same_transforms_as_before() -> None:
    """The square case keeps its random stream: rerunning a square-crop recipe gives the same patches."""
    square = torch.rand(2, 5, 5)
    for index in range(16):
        expected = dihedral(square, int(patch_rng(0, 0, index).integers(NUM_DIHEDRAL)))
        assert torch.equal(augment_patch(square, patch_rng(0, 0, index)), expected)


def test_datasets_cut_strips_of_cubes_and_images() -> None:
    cubes = CubePatchDataset([torch.rand(4, 40, 64)], (8, 48), patches_per_cube=6, seed=1)
    assert cubes.patch_size == (8, 48) and {tuple(cubes[i].shape) for i in range(6)} == {(4, 8, 48)}
    assert CubePatchDataset([torch.rand(4, 40, 64)], (16, 16)).patch_size == 16
    with pytest.raises(ValueError, match=r"patch size 8x65 is larger than cube 0 \(40x64\)"):
        CubePatchDataset([torch.rand(4, 40, 64)], (8, 65))
    images = RandomPatchDataset([torch.rand(3, 40, 64)], (8, 48), patches_per_image=4, seed=1)
    assert {tuple(images[i].shape) for i in range(4)} == {(3, 8, 48)}


def test_mask_strips_for_the_operator_and_for_every_batch() -> None:
    mask = torch.rand(40, 50, generator=torch.Generator().manual_seed(3))
    crop = crop_mask(mask, (8, 50), seed=2)
    assert crop.shape == (8, 50)
    assert any(torch.equal(mask[top : top + 8], crop) for top in range(33))
    with pytest.raises(ValueError, match=r"patch size 8x51 is larger than the 40x50 CASSI mask"):
        crop_mask(mask, (8, 51))
    sampler = RandomMaskCrops(mask, (8, 32))
    assert sampler.shape == (8, 32) and sampler.positions == 33 * 19
    physics = CASSI(torch.ones(8, 32))
    sampler(physics, torch.Generator().manual_seed(0))
    assert any(
        torch.equal(mask[t : t + 8, left : left + 32], physics.mask) for t in range(33) for left in range(19)
    )
    with pytest.raises(ValueError, match=r"needs a CASSI operator with a 8x32 mask"):
        sampler(CASSI(torch.ones(8, 8)), torch.Generator())
    with pytest.raises(ValueError, match="crop size must be"):
        RandomMaskCrops(mask, (41, 8))


def test_patch_height_is_a_cassi_option() -> None:
    from lorun_peft.recipes import parse_training_args

    _, data, _, _ = parse_training_args("cassi", ["--patch_size", "256", "--patch_height", "32"])
    assert data.patch == (32, 256)
    _, data, _, _ = parse_training_args("cassi", ["--patch_size", "64"])
    assert data.patch == 64
    with pytest.raises(ValueError, match="--patch_height is for CASSI's full-width strips; the cs task"):
        parse_training_args("cs", ["--patch_height", "16"])
    with pytest.raises(ValueError, match="--patch_size and --patch_height must be >= 1"):
        parse_training_args("cassi", ["--patch_height", "0"])

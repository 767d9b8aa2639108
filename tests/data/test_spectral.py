"""Spectral augmentation for CASSI: the RGB -> spectrum lift, band-wise brightness, mixed sources."""

from __future__ import annotations

import math

import pytest
import torch

from lorun_peft.data import KAIST_WAVELENGTHS_28, CubePatchDataset, RandomPatchDataset
from lorun_peft.data.spectral import (
    BandGainAugment,
    LiftedRGBPatches,
    MixedPatches,
    SpectralLift,
    rgb_response,
)
from lorun_peft.recipes import DataArguments, training_data
from lorun_peft.tasks import CASSIArguments, get_task

torch.set_num_threads(1)
BANDS = len(KAIST_WAVELENGTHS_28)


def _smooth_cubes(count: int = 2, size: int = 24) -> list[torch.Tensor]:
    """Cubes whose spectra are mixes of 3 smooth curves: exactly liftable from their RGB projection."""
    lam = torch.linspace(0, 1, BANDS)
    curves = torch.stack([torch.exp(-((lam - c) ** 2) / 0.05) for c in (0.2, 0.5, 0.8)])  # (3, bands)
    generator = torch.Generator().manual_seed(0)
    cubes = []
    for _ in range(count):
        weights = torch.rand(3, size, size, generator=generator)
        cube = torch.einsum("kb,khw->bhw", curves, weights)
        cubes.append(cube / cube.max())
    return cubes


def test_rgb_response_maps_white_to_white():
    response = rgb_response(KAIST_WAVELENGTHS_28)
    assert response.shape == (BANDS, 3)
    torch.testing.assert_close(response.sum(0), torch.ones(3, dtype=response.dtype))


def test_lift_recovers_spectra_in_a_three_dimensional_span():
    cubes = _smooth_cubes()
    lift = SpectralLift.fit(cubes, KAIST_WAVELENGTHS_28, ridge=1e-9)
    assert lift.fit_error < 1e-3
    rgb = torch.einsum("bc,bhw->chw", rgb_response(KAIST_WAVELENGTHS_28).float(), cubes[0])
    torch.testing.assert_close(lift(rgb), cubes[0].clamp(0, 1), atol=2e-3, rtol=0)


def test_lift_rejects_bad_inputs():
    cubes = _smooth_cubes()
    with pytest.raises(ValueError, match="band counts"):
        SpectralLift.fit(cubes, KAIST_WAVELENGTHS_28[:10])
    lift = SpectralLift.fit(cubes, KAIST_WAVELENGTHS_28)
    with pytest.raises(ValueError, match="RGB tensor"):
        lift(torch.rand(4, 8, 8))


def test_lifted_patches_have_the_cube_band_count_and_range():
    lift = SpectralLift.fit(_smooth_cubes(), KAIST_WAVELENGTHS_28)
    rgb = RandomPatchDataset([torch.rand(3, 40, 40), torch.rand(3, 32, 48)], 16, seed=1)
    lifted = LiftedRGBPatches(rgb, lift)
    patch = lifted[1]
    assert patch.shape == (BANDS, 16, 16) and patch.min() >= 0 and patch.max() <= 1
    lifted.set_epoch(3)
    assert rgb.epoch == 3


def test_lifted_patches_match_the_brightness_of_reference_patches():
    lift = SpectralLift.fit(_smooth_cubes(), KAIST_WAVELENGTHS_28)
    rgb = RandomPatchDataset([0.3 + 0.6 * torch.rand(3, 40, 40) for _ in range(6)], 16, seed=1)
    dim = CubePatchDataset([0.02 + 0.1 * torch.rand(BANDS, 30, 30) for _ in range(3)], 16, seed=2)
    plain = LiftedRGBPatches(rgb, lift)
    matched = LiftedRGBPatches(rgb, lift, brightness_reference=dim)
    reference_means = sorted(float(dim.cubes[i].mean()) for i in range(3))
    for index in range(6):
        patch = matched[index]
        assert plain[index].mean() > 0.2  # the photographs are bright ...
        assert 0.5 * reference_means[0] < patch.mean() < 1.5 * reference_means[-1]  # ... until matched
        assert patch.max() <= 1.0
        torch.testing.assert_close(patch / patch.mean(), plain[index] / plain[index].mean())  # only scaled
        assert torch.equal(matched[index], patch)
    matched.set_epoch(2)
    assert dim.epoch == 2
    with pytest.raises(ValueError, match="brightness_reference"):
        LiftedRGBPatches(rgb, lift, brightness_reference=[])


def test_band_gain_is_smooth_bounded_and_reproducible():
    cubes = CubePatchDataset([torch.full((BANDS, 20, 20), 0.5)], 8, seed=0)
    augmented = BandGainAugment(cubes, 0.3, seed=0)
    first, again = augmented[0], augmented[0]
    assert torch.equal(first, again)
    gains = first[:, 0, 0] / 0.5
    assert gains.min() >= 0.7 * 0.7 - 1e-6 and gains.max() <= 1.3 + 1e-6
    assert (gains.max() - gains.min()) > 0.01  # the bands really get different gains
    assert torch.allclose(first[:, 0, 0], first[:, 5, 7])  # one gain per band, the same at every pixel
    steps = (gains[1:] - gains[:-1]).abs().max()
    assert steps < 0.6 * 3 / (BANDS - 1) + 1e-6  # piecewise linear through 4 control points
    augmented.set_epoch(1)
    assert not torch.equal(augmented[0], first)
    assert torch.equal(BandGainAugment(cubes, 0.0)[0], cubes[0])
    with pytest.raises(ValueError, match="strength"):
        BandGainAugment(cubes, 1.5)


def test_mixed_patches_draw_each_source_at_its_rate():
    ones = CubePatchDataset([torch.ones(BANDS, 8, 8)], 4, augment=False)
    zeros = CubePatchDataset([torch.zeros(BANDS, 8, 8)], 4, augment=False)
    mixed = MixedPatches(ones, zeros, 0.25, seed=0, length=400)
    share = sum(float(mixed[i].mean() == 0) for i in range(400)) / 400
    assert math.isclose(share, 0.25, abs_tol=0.07)
    assert torch.equal(mixed[17], mixed[17])
    assert torch.equal(MixedPatches(ones, zeros, 0.0, length=5)[3], ones[0])
    with pytest.raises(ValueError, match="fraction"):
        MixedPatches(ones, zeros, 1.5)


def test_train_source_adds_lifted_rgb_and_band_gain(tmp_path):
    import numpy as np
    from PIL import Image

    cube = _smooth_cubes(1, 32)[0]
    np.savez(tmp_path / "scene.npz", cube=cube.permute(1, 2, 0).numpy())
    images = tmp_path / "rgb"
    images.mkdir()
    for index in range(3):
        Image.fromarray((np.random.default_rng(index).random((40, 40, 3)) * 255).astype("uint8")).save(
            images / f"{index}.png"
        )
    data = DataArguments(train_data=str(tmp_path / "scene.npz"), patch_size=16)
    task_args = CASSIArguments(bands=BANDS, rgb_lift_data=str(images), band_gain=0.2)
    source, text = training_data(get_task("cassi"), task_args, data)
    assert isinstance(source, BandGainAugment) and isinstance(source.patches, MixedPatches)
    assert "lifted to 28 bands" in text and "band-wise brightness" in text
    assert "cubes' brightness" not in text
    task_args.rgb_lift_match_brightness = True
    source, text = training_data(get_task("cassi"), task_args, data)
    assert "scaled to the cubes' brightness" in text
    assert source.patches.second.brightness_reference is source.patches.first
    assert source[0].shape == (BANDS, 16, 16)
    with pytest.raises(FileNotFoundError, match="rgb_lift_data"):
        training_data(get_task("cassi"), CASSIArguments(bands=BANDS, rgb_lift_data="nope"), data)


def test_cassi_trains_on_stuffed_toys_only_by_default(tmp_path):
    """Without --train_data, cloth.npz (the test scene) stays out of the training cubes."""
    import numpy as np

    cubes = tmp_path / "CASSI" / "cubes"
    cubes.mkdir(parents=True)
    for name in ("stuffed_toys", "cloth"):
        np.savez(
            cubes / f"{name}.npz", cube=np.random.default_rng(0).random((20, 20, BANDS)).astype("float32")
        )
    source, text = training_data(
        get_task("cassi"), CASSIArguments(bands=BANDS), DataArguments(data_dir=str(tmp_path), patch_size=8)
    )
    assert "stuffed_toys.npz" in text and "cloth" not in text
    assert len(source.cubes) == 1

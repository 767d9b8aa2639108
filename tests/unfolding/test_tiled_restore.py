"""Tiled restore: windows with a halo reproduce the whole-image result where the physics acts locally."""

from __future__ import annotations

import pytest
import torch
from unfolding_helpers import make_model, smooth_images

from lorun_peft.unfolding.tiling import restore_in_tiles, tile_windows


def test_tile_windows_partition_the_range_and_clip_the_halo():
    windows = tile_windows(10, 4, 1)
    assert windows == [(0, 5, 0, 4), (3, 9, 4, 8), (7, 10, 8, 10)]
    cores = [index for _, _, start, stop in windows for index in range(start, stop)]
    assert cores == list(range(10))
    with pytest.raises(ValueError, match="tile must be >= 1"):
        tile_windows(10, 0, 1)


def test_restore_in_tiles_is_exact_for_a_pointwise_map():
    measurement = torch.randn(2, 3, 13, 17)
    image = restore_in_tiles(
        lambda w: w.repeat_interleave(2, -1).repeat_interleave(2, -2) * 3,
        measurement,
        (2, 3, 26, 34),
        grid_factor=2,
        tile=5,
        overlap=2,
    )
    expected = measurement.repeat_interleave(2, -1).repeat_interleave(2, -2) * 3
    assert torch.equal(image, expected)


def _large_case(task: str, size: int):
    model, _, _ = make_model(task)
    channels = 1
    images = smooth_images(1, channels, size, seed=3)
    with torch.no_grad():
        y = model.physics.measure(images)
    return model, y


@pytest.mark.parametrize("task", ["cs", "sr2"])
def test_tiled_restore_matches_the_whole_image_away_from_window_borders(task):
    model, y = _large_case(task, 64)
    full = model.restore(y)
    tiled = model.restore(y, tile_size=16, tile_overlap=16)
    assert tiled.shape == full.shape
    # SR's whole-image FFT solve treats the image as periodic, so its border mixes with the opposite
    # side, which no window sees: compare 8 pixels in from the image border (CS has no such effect)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8)) if task == "sr2" else (...,)
    # a halo as wide as the model's receptive field over the K stages makes windows agree closely
    torch.testing.assert_close(tiled[inner], full[inner], atol=2e-3, rtol=0)
    no_halo = model.restore(y, tile_size=16, tile_overlap=0)
    assert (no_halo - full)[inner].abs().max() > 10 * (tiled - full)[inner].abs().max(), (
        "the halo must matter"
    )


def test_tiled_restore_returns_an_ordinary_tensor_and_keeps_modes():
    model, y = _large_case("cs", 32)
    model.train()
    out = model.restore(y, tile_size=16)
    assert not out.is_inference() and not out.requires_grad
    assert model.training
    (out * torch.ones_like(out, requires_grad=True)).sum().backward()  # usable with autograd


def test_tiled_restore_crops_to_image_size_and_handles_single_measurements():
    model, _, _ = make_model("cs")  # 8x8 blocks
    images = smooth_images(2, 1, 40)[..., :35, :37]
    y = model.physics.measure(images)
    tiled = model.restore(y, image_size=(35, 37), tile_size=16)
    assert tiled.shape == (2, 1, 35, 37)
    single = model.restore(y[0], image_size=(35, 37), tile_size=16)
    torch.testing.assert_close(single, tiled[0])


def test_tiled_restore_rejects_operators_that_do_not_act_locally_and_bad_tiles():
    cassi, _, y = make_model("cassi")
    with pytest.raises(ValueError, match="grid_factor is None"):
        cassi.restore(y, tile_size=16)
    model, _, y = make_model("cs")  # 8x8 blocks
    with pytest.raises(ValueError, match="tile_size must be an integer >= 8"):
        model.restore(y, tile_size=4)
    with pytest.raises(ValueError, match="tile_overlap must be an integer >= 0"):
        model.restore(y, tile_size=16, tile_overlap=-1)
    with pytest.raises(ValueError, match="tile_size must be an integer"):
        model.restore(y, tile_size=16.0)

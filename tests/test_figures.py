"""Figures: valid PNGs of the documented pixel size, and the data they plot (captured from matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrained import tiny_cs_model

from lorun_peft import LoRunModel, StageLoRAConfig, UNetConfig, UNetDenoiser
from lorun_peft.figures import (
    auto_zoom_box,
    cassi_band_grid_figure,
    cassi_to_rgb,
    comparison_figure,
    stage_delta_weights,
    stage_lora_layers,
    stage_lora_weights_figure,
    stage_psnr,
    stagewise_psnr_figure,
    wavelength_to_rgb,
)
from lorun_peft.metrics import cs_psnr
from lorun_peft.physics import BlockCS
from lorun_peft.tuners import stage_adapter_name


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every array passed to ``Axes.imshow`` while the test runs."""
    arrays: list[np.ndarray] = []
    original = matplotlib.axes.Axes.imshow

    def record(self, X, *args, **kwargs):
        arrays.append(np.array(X, copy=True))
        return original(self, X, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", record)
    return arrays


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as png:
        assert png.format == "PNG"
        png.load()
        return png.size


def test_comparison_figure_plots_the_images_and_their_crops(tmp_path: Path, shown: list[np.ndarray]) -> None:
    generator = torch.Generator().manual_seed(0)
    gray = [torch.rand(1, 30, 40, generator=generator) for _ in range(3)]
    path = comparison_figure(
        gray,
        ["a", "b", "c"],
        tmp_path / "cmp.png",
        captions=["1", "2", "3"],
        zoom=(5, 10, 8, 12),
        panel_width=120,
    )
    image_h = round(120 * 30 / 40)
    assert _png_size(path) == (3 * 120 + 4 * 8, 30 + image_h + 8 + 22 + image_h + 8)
    assert len(shown) == 6
    for i, image in enumerate(gray):
        full, crop = shown[2 * i], shown[2 * i + 1]
        np.testing.assert_array_equal(full, image[0].double().numpy())
        np.testing.assert_array_equal(crop, image[0, 5:13, 10:22].double().numpy())


def test_comparison_figure_rgb_cube_and_no_zoom(tmp_path: Path, shown: list[np.ndarray]) -> None:
    rgb = torch.rand(3, 16, 16)
    cube = torch.rand(28, 16, 16)
    path = comparison_figure([rgb, cube], ["rgb", "cube"], tmp_path / "c.png", zoom=None, panel_width=64)
    assert _png_size(path) == (2 * 64 + 3 * 8, 30 + 64 + 8)
    np.testing.assert_array_equal(shown[0], rgb.double().permute(1, 2, 0).numpy())
    np.testing.assert_allclose(shown[1], cassi_to_rgb(cube.double()).clamp(0, 1).permute(1, 2, 0).numpy())


def test_comparison_figure_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one title"):
        comparison_figure([torch.rand(1, 8, 8)], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="share one size"):
        comparison_figure([torch.rand(1, 8, 8), torch.rand(1, 8, 9)], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="does not fit"):
        comparison_figure([torch.rand(1, 8, 8)], ["a"], tmp_path / "x.png", zoom=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="PNG"):
        comparison_figure([torch.rand(1, 8, 8)], ["a"], tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="C = 1"):
        comparison_figure([torch.rand(2, 8, 8)], ["a"], tmp_path / "x.png")


def test_auto_zoom_box_finds_the_detailed_region() -> None:
    image = torch.full((1, 64, 64), 0.5)
    image[0, 40:56, 8:24] = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    top, left, height, width = auto_zoom_box(image)
    assert (height, width) == (16, 16)
    assert (top, left) == (40, 8)


def test_stage_psnr_and_its_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_cs_model()
    clean = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model.physics.measure(clean)
    curve = stage_psnr(model, y, clean)
    assert len(curve) == model.num_stages
    assert curve[-1] == pytest.approx(float(cs_psnr(model.restore(y, image_size=(16, 16)), clean)), abs=1e-4)
    with torch.no_grad():
        first = model(y, return_stages=True, image_size=(16, 16)).stages[0]
    assert curve[0] == pytest.approx(float(cs_psnr(first, clean)), abs=1e-6)
    plotted: list[list[float]] = []
    original = matplotlib.axes.Axes.plot

    def record(self, x, y, *args, **kwargs):
        plotted.append(list(y))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    curves = {"LoRun-2": curve, "other": [20.0, 21.5]}
    path = stagewise_psnr_figure(curves, tmp_path / "stages.png", size=(500, 300))
    assert _png_size(path) == (500, 300)
    assert plotted == [curve, [20.0, 21.5]]
    with pytest.raises(ValueError, match="non-empty"):
        stagewise_psnr_figure({"a": []}, tmp_path / "empty.png")


def test_stage_delta_weights_are_b_times_a(tmp_path: Path, shown: list[np.ndarray]) -> None:
    model = tiny_cs_model()
    layers = stage_lora_layers(model)
    assert layers and all(name.startswith("denoisers.0.") for name in layers)
    name = layers[1]
    layer = model.get_submodule(name)
    matrices = stage_delta_weights(model, name, "ratio-10")
    assert len(matrices) == model.num_stages
    for k, matrix in enumerate(matrices):
        adapter = stage_adapter_name("ratio-10", k)
        expected = layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight * layer.scaling[adapter]
        torch.testing.assert_close(matrix, expected.detach())
    assert not torch.equal(matrices[0], matrices[1])
    short = name.split(".", 2)[-1]  # a unique suffix works too; the active set is the default
    model.set_adapter_set("ratio-10")
    path = stage_lora_weights_figure(model, short, tmp_path / "fig12.png", columns=2, panel=100)
    assert _png_size(path) == (2 * 100 + 2 * 8 + 72, 30 + 1 * (100 + 24) + 8)
    assert len(shown) == 2
    for array, matrix in zip(shown, matrices):
        np.testing.assert_allclose(array, matrix.double().numpy())


def test_stage_delta_weights_peft_layout_and_errors() -> None:
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))
    model = LoRunModel.from_components(BlockCS(0.25, block_size=8), denoiser, num_stages=2)
    with pytest.raises(ValueError, match="no StageLoRA layers"):
        stage_delta_weights(model, "anything")
    model.add_stage_adapters("peft-set", StageLoRAConfig(num_stages=2, gamma=50, conv_layout="peft"))
    name = next(
        n for n in stage_lora_layers(model) if isinstance(model.get_submodule(n).base_layer, torch.nn.Conv2d)
    )
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.lora_B["peft-set/stage_01"].weight.normal_()
    matrix = stage_delta_weights(model, name)[1]
    a, b = layer.lora_A["peft-set/stage_01"].weight, layer.lora_B["peft-set/stage_01"].weight
    torch.testing.assert_close(
        matrix, (b.flatten(1) @ a.flatten(1) * layer.scaling["peft-set/stage_01"]).detach()
    )
    with pytest.raises(ValueError, match="not a StageLoRA layer"):
        stage_delta_weights(model, "no.such.layer")
    with pytest.raises(ValueError, match="no adapters of set 'other'"):
        stage_delta_weights(model, name, "other")


def test_wavelength_to_rgb() -> None:
    rgb = wavelength_to_rgb([450.0, 530.0, 650.0, 300.0, 800.0])
    assert rgb.shape == (5, 3)
    np.testing.assert_allclose(rgb[0], [0.0, 0.2, 1.0])  # blue
    np.testing.assert_allclose(rgb[1], [20 / 70, 1.0, 0.0])  # green
    np.testing.assert_allclose(rgb[2], [1.0, 0.0, 0.0])  # red
    np.testing.assert_array_equal(rgb[3:], 0.0)  # invisible
    assert wavelength_to_rgb(400.0)[2] == pytest.approx(0.3 + 0.7 * 20 / 40)  # dimmer towards violet


def test_cassi_to_rgb_maps_a_flat_spectrum_to_grey() -> None:
    cube = torch.full((28, 4, 5), 0.4, dtype=torch.float64)
    rgb = cassi_to_rgb(cube)
    assert rgb.shape == (3, 4, 5)
    torch.testing.assert_close(rgb, torch.full((3, 4, 5), 0.4, dtype=torch.float64))
    red_only = torch.zeros(28, 2, 2)
    red_only[-1] = 1.0  # the 28th KAIST band (~648 nm) is pure red
    red, green, blue = cassi_to_rgb(red_only)[:, 0, 0].tolist()
    assert red > 0 and green == 0 and blue == 0
    with pytest.raises(ValueError, match="got 3 wavelengths for a cube of 4 bands"):
        cassi_to_rgb(torch.rand(4, 2, 2), wavelengths=[450, 500, 550])


def test_cassi_band_grid_figure(tmp_path: Path, shown: list[np.ndarray]) -> None:
    cube = torch.rand(28, 12, 10, generator=torch.Generator().manual_seed(2)) * 0.5
    path = cassi_band_grid_figure(cube, tmp_path / "bands.png", columns=7, panel=60)
    assert _png_size(path) == (7 * 60 + 2 * 8, 4 * (60 + 18) + 8)
    assert len(shown) == 28
    from lorun_peft.data import KAIST_WAVELENGTHS_28

    tints = wavelength_to_rgb(np.asarray(KAIST_WAVELENGTHS_28))
    tints = tints / tints.max(axis=1, keepdims=True)
    values = cube.double().numpy() / float(cube.max())
    for c in (0, 13, 27):
        np.testing.assert_allclose(shown[c], np.clip(values[c][..., None] * tints[c], 0, 1))

"""Tests of lorun_peft.evaluation: protocols, the CASSI mask swap, reports and real-CASSI checks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lorun_peft import metrics
from lorun_peft.denoisers import build_denoiser
from lorun_peft.evaluation import (
    EvaluationReport,
    ItemResult,
    evaluate_items,
    load_test_items,
    reconstruct_real_cassi,
    save_restored,
    task_of,
)
from lorun_peft.figures import cassi_to_rgb
from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, gaussian_kernel
from lorun_peft.tasks import synthetic_cube
from lorun_peft.unfolding import LoRunModel


def _model(physics, channels: int, stages: int = 2) -> LoRunModel:
    torch.manual_seed(0)
    return LoRunModel.from_components(physics, build_denoiser("unet", channels, 4, 2), num_stages=stages)


def _image(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(channels, height, width, generator=generator)


def test_sr_crops_to_the_scale_and_scores_y_with_the_scale_border():
    model = _model(BlurDownsample(gaussian_kernel(9, 1.2), 3), channels=3)
    image = _image(3, 37, 41)  # not multiples of 3: cropped to 36 x 39
    report = evaluate_items(model, None, [("odd", image)])
    crop = image[:, :36, :39].unsqueeze(0)
    restored = model.restore(model.physics.A(crop)).clamp(0, 1)
    assert report.task == "sr" and report.items[0].shape == (3, 37, 41)
    assert report.items[0].psnr == pytest.approx(float(metrics.psnr_y(restored, crop, shave=3)), abs=1e-9)
    assert report.items[0].ssim == pytest.approx(float(metrics.ssim_y(restored, crop, shave=3)), abs=1e-9)


def test_cs_uses_the_cs_protocol_and_stagewise_ends_at_the_final_psnr():
    model = _model(BlockCS(0.25, block_size=16), channels=1, stages=3)
    image = _image(1, 40, 24)  # padded to the block grid inside the model, cropped back
    report = evaluate_items(model, "cs", [("x", image)], stagewise=True)
    restored = model.restore(model.physics.A(image.unsqueeze(0)), image_size=(40, 24))
    assert report.items[0].psnr == pytest.approx(
        float(metrics.cs_psnr(restored, image.unsqueeze(0))), abs=1e-9
    )
    assert len(report.stage_psnr) == 3
    assert report.stage_psnr[-1] == pytest.approx(report.mean_psnr)


def test_cassi_evaluates_a_larger_cube_with_the_full_mask_and_puts_the_crop_back():
    full = 0.1 + 0.9 * torch.rand(48, 48, generator=torch.Generator().manual_seed(1))
    model = _model(CASSI(full[:32, :32]), channels=6)
    cube = synthetic_cube(_image(3, 48, 48), 6)
    with pytest.raises(ValueError, match="needs a mask at least that large"):
        evaluate_items(model, "cassi", [("c", cube)])
    report = evaluate_items(model, "cassi", [("c", cube)], mask=full)
    assert model.physics.mask.shape == (32, 32)  # the model's own physics is back
    expected = CASSI(full)
    model.task.physics = expected
    restored = model.restore(expected.A(cube.unsqueeze(0)))
    assert report.items[0].psnr == pytest.approx(float(metrics.cassi_psnr(restored.clamp(0, 1), cube[None])))


def test_wrong_channel_count_names_the_item():
    model = _model(BlockCS(0.25, block_size=16), channels=1)
    with pytest.raises(ValueError, match="test item rgb has 3 channels; the model expects 1"):
        evaluate_items(model, "cs", [("rgb", _image(3, 32, 32))])


def test_report_files(tmp_path):
    report = EvaluationReport(
        task="cs",
        protocol="p",
        items=[
            ItemResult("a", 30.0, 0.9, (1, 8, 8), [20.0, 30.0]),
            ItemResult("b", 20.0, 0.5, (1, 8, 8), [10.0, 20.0]),
        ],
    )
    paths = report.save(tmp_path)
    rows = list(csv.reader(paths["csv"].read_text().splitlines()))
    assert rows[0] == ["name", "psnr", "ssim", "shape"]
    assert rows[-1][:3] == ["average", "25.0000", "0.700000"]
    data = json.loads(paths["json"].read_text())
    assert data["mean_psnr"] == 25.0 and data["stage_psnr"] == [15.0, 25.0]
    assert paths["stagewise_csv"].read_text().splitlines()[1] == "1,15.0000,20.0000,10.0000"
    assert paths["stagewise_png"].read_bytes()[:4] == b"\x89PNG"
    assert report.format_table().splitlines()[-2].split() == ["average", "25.00", "0.7000"]
    without = EvaluationReport("cs", "p", [ItemResult("a", 1.0, 0.1, (1, 8, 8))])
    assert set(without.save(tmp_path / "plain")) == {"csv", "json"}


def test_saved_cube_png_is_the_figures_wavelength_pseudo_colour(tmp_path):
    cube = _image(28, 6, 5)
    cube[:, :2] = 1.5  # a flat spectrum above 1: grey 1.5, clipped to 255 in the PNG
    png, npz = save_restored(cube, tmp_path, "scene", "cassi")
    assert (png.name, npz.name) == ("scene.png", "scene.npz")
    with Image.open(png) as image:
        saved = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
    expected = (cassi_to_rgb(cube).clamp(0, 1) * 255).round()
    assert saved.shape == (3, 6, 5) and torch.equal(saved, expected)
    assert bool((saved[:, :2] == 255).all())
    red_only = torch.zeros(28, 2, 2)
    red_only[-4:] = 1.0
    save_restored(red_only, tmp_path, "red", "cassi")
    with Image.open(tmp_path / "red.png") as image:
        red, green, blue = np.array(image)[0, 0].tolist()
    assert red > 4 * green and blue == 0  # 614-648 nm: red with a little green, no blue
    np.testing.assert_array_equal(np.load(npz)["cube"], cube.permute(1, 2, 0).numpy())


def test_load_test_items_cubes(tmp_path):
    cave = np.random.default_rng(0).integers(0, 65535, (16, 16, 31)).astype(np.uint16)
    np.savez(
        tmp_path / "a.npz", cube=cave, wavelengths_nm=np.arange(400, 701, 10, dtype=np.float32), scale=65535
    )
    ((name, cube),) = load_test_items("cassi", tmp_path)
    assert name == "a" and cube.shape == (28, 16, 16)  # resampled to the KAIST wavelengths
    with pytest.raises(FileNotFoundError, match="missing do not exist"):
        load_test_items("cassi", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no cube files in"):
        load_test_items("cassi", tmp_path / "empty")


def test_real_cassi_checks_the_band_count(tmp_path):
    from scipy.io import savemat

    mask = torch.rand(20, 20, generator=torch.Generator().manual_seed(0))
    model = _model(CASSI(mask), channels=4)
    assert task_of(model) == "cassi"
    savemat(
        tmp_path / "scene1.mat", {"meas_real": np.random.default_rng(0).random((20, 26)).astype(np.float32)}
    )
    written = reconstruct_real_cassi(model, tmp_path / "scene1.mat", mask, tmp_path / "out")
    assert sorted(p.name for p in written) == ["scene1.npz", "scene1.png"]
    assert np.load(written[1] if written[1].suffix == ".npz" else written[0])["cube"].shape == (20, 20, 4)
    savemat(tmp_path / "scene2.mat", {"meas_real": np.zeros((20, 30), np.float32)})
    with pytest.raises(ValueError, match="scene2.mat has width 30, i.e. 6 bands"):
        reconstruct_real_cassi(model, tmp_path / "scene2.mat", mask, tmp_path / "out")
    assert model.physics.mask.shape == (20, 20)


def test_real_cassi_scale_and_display_stretch(tmp_path):
    from scipy.io import savemat

    from lorun_peft.evaluation import real_measurement_scale

    assert real_measurement_scale("mst", 28) == 14.0 and real_measurement_scale("MST", 4) == 2.0
    assert real_measurement_scale("2.5", 28) == 2.5 and real_measurement_scale(3, 28) == 3.0
    for bad in ("auto", "-1", 0, float("nan"), True):
        with pytest.raises(ValueError, match="'mst' or a positive number"):
            real_measurement_scale(bad, 28)
    mask = torch.rand(20, 20, generator=torch.Generator().manual_seed(0))
    model = _model(CASSI(mask), channels=4)
    y = 0.02 * np.random.default_rng(0).random((20, 26)).astype(np.float32)  # dim, like the TSA scenes
    savemat(tmp_path / "scene1.mat", {"meas_real": y})
    for scale, factor in (("mst", 2.0), (5.0, 5.0)):
        out = tmp_path / f"out_{scale}"
        reconstruct_real_cassi(model, tmp_path / "scene1.mat", mask, out, measurement_scale=scale)
        expected = model.restore(torch.from_numpy(y) * factor)
        assert np.allclose(np.load(out / "scene1.npz")["cube"], expected.permute(1, 2, 0).numpy(), atol=1e-6)
        png = np.asarray(Image.open(out / "scene1.png"))
        assert np.percentile(png, 99.5) >= 250  # stretched for display, not near-black

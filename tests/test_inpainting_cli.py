"""The inpainting task from the command line: restore (with and without --mask), evaluate, demo, info.

A tiny inpainting model (K = 2, U-Net width 4) with sets missing-50/70 is installed in a temporary asset
root; the shipped model has the same layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorun_peft import LoRunModel, StageLoRAConfig
from lorun_peft.cli import main
from lorun_peft.denoisers import build_denoiser
from lorun_peft.physics import pixel_inpainting
from lorun_peft.pretrained import save_pretrained_assets

torch.set_num_threads(1)


def _tiny_model() -> LoRunModel:
    torch.manual_seed(0)
    model = LoRunModel.from_components(
        pixel_inpainting(0.7), build_denoiser("unet", 1, 4, 2), num_stages=2, algorithm="hqs"
    )
    for name, missing in (("missing-50", 0.5), ("missing-70", 0.7)):
        model.add_stage_adapters(
            name, StageLoRAConfig(num_stages=2, gamma=50), physics=pixel_inpainting(missing)
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("assets")
    save_pretrained_assets(_tiny_model(), "inpainting", folder)
    return folder


def _gray_png(path: Path, size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    array = np.random.default_rng(seed).integers(0, 256, size).astype("uint8")
    Image.fromarray(array).save(path)
    return path


def test_restore_simulates_a_seeded_mask_and_reports_the_protocol(root, tmp_path, capsys):
    image = _gray_png(tmp_path / "clean.png")
    argv = ["restore", str(image), "--task", "inpainting", "--missing", "0.5", "--pretrained-dir", str(root)]
    assert main([*argv, "--output", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "LoRun-2 (adapter set missing-50)" in out and "50% of the pixels missing" in out
    assert "inpainting: CS protocol metrics" in out and Image.open(tmp_path / "a.png").size == (32, 24)
    assert main([*argv, "--output", str(tmp_path / "b.png")]) == 0  # same seed: same mask, same result
    first = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.int16)
    second = np.asarray(Image.open(tmp_path / "b.png"), dtype=np.int16)
    assert np.abs(first - second).max() <= 1
    assert main([*argv, "--seed", "3", "--output", str(tmp_path / "c.png")]) == 0
    third = np.asarray(Image.open(tmp_path / "c.png"), dtype=np.int16)
    assert np.abs(first - third).max() > 1  # another seed draws another mask


def test_restore_a_measured_image_needs_and_uses_its_mask(root, tmp_path, capsys):
    clean = np.random.default_rng(1).random((24, 32)).astype("float32")
    mask = (np.random.default_rng(2).random((24, 32)) > 0.6).astype("uint8")
    Image.fromarray((clean * mask * 255).round().astype("uint8")).save(tmp_path / "damaged.png")
    Image.fromarray(mask * 255).save(tmp_path / "mask.png")
    argv = ["restore", str(tmp_path / "damaged.png"), "--task", "inpainting", "--measured"]
    argv += ["--pretrained-dir", str(root), "--output", str(tmp_path / "out.png")]
    assert main(argv) == 2
    assert "no mask yet" in capsys.readouterr().err
    assert main([*argv, "--mask", str(tmp_path / "mask.png")]) == 0
    restored = np.asarray(Image.open(tmp_path / "out.png"), dtype=np.float32) / 255
    seen = mask.astype(bool)
    # HQS keeps the seen pixels close to the measurement; the missing ones are filled (not left at 0)
    assert np.abs(restored[seen] - clean[seen]).mean() < 0.1
    assert restored[~seen].mean() > 0.1
    np.save(tmp_path / "bad.npy", np.ones((5, 5), dtype=np.float32))
    assert main([*argv, "--mask", str(tmp_path / "bad.npy")]) == 2
    assert "the mask is 5x5, the image 24x32" in capsys.readouterr().err


def test_evaluate_and_info_and_the_demo(root, tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    for index in range(2):
        _gray_png(folder / f"img{index}.png", (20 + 4 * index, 24), seed=index)
    argv = ["evaluate", str(folder), "--task", "inpainting", "--pretrained-dir", str(root)]
    assert main([*argv, "--output-dir", str(tmp_path / "eval"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Inpainting: a random mask per image seeded by (seed, index)" in out and "img1" in out
    assert (tmp_path / "eval" / "metrics.csv").is_file()
    assert main(["info", "--task", "inpainting", "--pretrained-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "pixel inpainting, 70% of the pixels missing" in out and "missing-50" in out
    demo = ["demo", "--task", "inpainting", "--size", "64", "--pretrained-dir", str(root)]
    assert main([*demo, "--output", str(tmp_path / "demo.png")]) == 0
    out = capsys.readouterr().out
    for row in ("harmonic (classical)", "Block-2-share (backbone)", "LoRun-2 (missing-70)"):
        assert row in out
    assert (tmp_path / "demo.png").is_file()

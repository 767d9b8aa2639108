"""The ``lorun`` command line against tiny pretrained assets (``LORUN_PRETRAINED_DIR``).

Commands run in-process through ``lorun_peft.cli.main`` (fast); one test runs the installed console
script in a subprocess to check the entry point and the one-line error on a real stderr.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrained import build_tiny_assets

from lorun_peft.cli import main
from lorun_peft.data.samples import load_sample_image
from lorun_peft.metrics import cs_psnr, cs_ssim
from lorun_peft.pretrained import PRETRAINED_ENV, load_pretrained

ROW = re.compile(
    r"^(?P<label>.+?)\s{2,}(?P<set>\S+)\s+(?P<ratio>[\d.]+ %)\s+(?P<psnr>-?[\d.]+)\s+(?P<ssim>-?[\d.]+)$"
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_assets(tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(autouse=True)
def _pretrained_env(assets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRETRAINED_ENV, str(assets))


def _sample_png(path: Path, name: str, size: tuple[int, int], mode: str = "L") -> Path:
    image = load_sample_image(name, mode)[:, : size[0], : size[1]]
    array = (image * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array[0] if mode == "L" else array.transpose(1, 2, 0)).save(path)
    return path


def _expected_cs(model, clean: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(seed)
    y = model.physics.measure(clean, generator=generator)
    restored = model.restore(y, image_size=tuple(clean.shape[-2:]))
    return float(cs_psnr(restored, clean)), float(cs_ssim(restored, clean))


def test_demo_end_to_end(tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "demo.png"
    code = main(["demo", "--size", "64", "--output", str(output), "--other-ratio", "0.1", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "'camera' (64x64 centre crop)" in out
    assert "own learned Phi" in out and "CS protocol" in out and "cs_psnr/cs_ssim" in out
    rows = {(m["label"].strip(), m["set"]): m for m in map(ROW.match, out.splitlines()) if m}
    assert list(rows) == [
        ("initial estimate (Phi^T y)", "ratio-25"),
        ("Block-2-share (backbone alone)", "phase-1"),
        ("LoRun-2", "ratio-25"),
        ("LoRun-2 (set swapped in)", "ratio-10"),
        ("LoRun-2 (set swapped in)", "ratio-50"),
    ]
    assert [m["ratio"] for m in rows.values()] == ["25 %", "25 %", "25 %", "10 %", "50 %"]
    # Numbers recomputed independently: each method measures the clean crop with its own physics.
    image = load_sample_image("camera", "L")
    top, left = (image.shape[-2] - 64) // 2, (image.shape[-1] - 64) // 2
    clean = image[:, top : top + 64, left : left + 64].unsqueeze(0)
    model = load_pretrained("cs", root=assets)
    expected = {("LoRun-2", "ratio-25"): _expected_cs(model, clean)}
    model.set_adapter_set("ratio-50")
    expected[("LoRun-2 (set swapped in)", "ratio-50")] = _expected_cs(model, clean)
    with model.disable_adapters():
        expected[("Block-2-share (backbone alone)", "phase-1")] = _expected_cs(model, clean)
    for key, (psnr, ssim) in expected.items():
        assert float(rows[key]["psnr"]) == pytest.approx(psnr, abs=0.006)
        assert float(rows[key]["ssim"]) == pytest.approx(ssim, abs=6e-5)
    assert len({rows[key]["psnr"] for key in rows}) == 5  # every method gives its own result
    assert re.search(r"done in \d+\.\d s", out)
    with Image.open(output) as png:
        assert png.format == "PNG"
        assert png.size == (6 * 256 + 7 * 8, 30 + 256 + 8 + 22 + 256 + 8)  # 6 panels, captions, zoom row


@pytest.mark.parametrize("command", [[], ["demo"], ["restore"], ["evaluate"], ["info"], ["train"]])
def test_help_exits_zero(command: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lorun{' ' + command[0] if command else ''}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "invalid choice"),
        (["demo", "--size", "x"], "invalid int value"),
        (["demo", "--size", "7"], "--size must be"),
        (["demo", "--output", "demo.jpg"], "must end in .png"),
        (["demo", "--image", "nope"], "unknown sample image"),
        (["demo", "--other-ratio", "0.3"], "no adapter set ['ratio-30']"),
        (["restore"], "required: input"),
        (["restore", "missing.png"], "missing.png does not exist"),
        (["restore", "{tmp}/notes.txt"], "cannot read notes.txt"),
        (["restore", "{tmp}/img.png", "--ratio", "0.3"], "no adapter set 'ratio-30'"),
        (["restore", "{tmp}/img.png", "--image-size", "3y"], "HxW"),
        (["restore", "{tmp}/img.png", "--task", "sr", "--kernel", "K2"], "--kernel needs --scale"),
        (["restore", "{tmp}/img.png", "--kernel", "K2"], "selects SR sets, but the task is 'cs'"),
        (["restore", "{tmp}/img.png", "--task", "cassi"], "pretrained 'cassi' is not installed"),
        (["restore", "{tmp}/img.png", "--backbone", "{tmp}/nothing"], "neither a local folder nor a Hub id"),
        (["info", "--backbone", "{tmp}"], "has no config.json"),
        (["evaluate", "{tmp}/no-folder"], "does not exist"),
        (["info", "--task", "sr", "--ratio", "0.25"], "--ratio selects CS sets"),
        (["info", "--pretrained-dir", "{tmp}"], "pretrained 'cs' is not installed at"),
        (["train", "--task", "denoise"], "invalid choice"),
    ],
)
def test_errors_are_one_line_with_code_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    _sample_png(tmp_path / "img.png", "camera", (32, 32))
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lorun") and "error:" in lines[0]
    assert message in lines[0]


def test_console_script_missing_assets(tmp_path: Path) -> None:
    script = shutil.which("lorun", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the lorun console script is not installed next to this Python")
    result = subprocess.run(
        [script, "demo", "--pretrained-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"lorun demo: error: pretrained 'cs' is not installed at {tmp_path / 'cs'} (expected "
        "backbone/config.json and backbone/model.safetensors there; installed: none); set "
        "LORUN_PRETRAINED_DIR (lorun: --pretrained-dir) or pass root=, or use your own model "
        "(--backbone/--adapters)"
    ]


def test_info_prints_sets_and_the_parameter_table(assets: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--ratio", "0.1"]) == 0
    out = capsys.readouterr().out
    model = load_pretrained("cs", "ratio-10", assets)
    assert "mode: lorun | K = 2 | algorithm: pgd" in out
    assert "adapter sets (3, active: ratio-10)" in out
    for name, percent in (("ratio-10", "10 %"), ("ratio-25", "25 %"), ("ratio-50", "50 %")):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert f"ratio {percent}" in line and " paper " in line and " 50 " in line
    assert "manifest note: tiny test model" in out
    assert model.parameter_report().format() in out


def test_info_list_and_own_backbone(assets: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cs " in out and "ratio-10, ratio-25, ratio-50" in out and "x2-k1, x4-k1" in out
    backbone = str(assets / "sr" / "backbone")
    assert main(["info", "--backbone", backbone]) == 0
    out = capsys.readouterr().out
    assert "Block-2-share" in out and "mode: shared" in out and "adapter sets" not in out
    assert "downsampling x2" in out


def test_restore_image_then_saved_measurement(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture
) -> None:
    source = _sample_png(tmp_path / "cam.png", "camera", (40, 48))
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    measurement = tmp_path / "y.safetensors"
    argv = [
        "restore",
        str(source),
        "--ratio",
        "0.5",
        "--output",
        str(first),
        "--save-measurement",
        str(measurement),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    clean = torch.from_numpy(np.asarray(Image.open(source), dtype=np.float32) / 255)[None, None]
    psnr, _ = _expected_cs(load_pretrained("cs", "ratio-50", assets), clean)
    printed = re.search(r"restored\s+PSNR\s+(-?[\d.]+) dB", out)
    # The CLI's own model instance may get other oneDNN kernels: the 2-decimal value may round the other way.
    assert printed and float(printed[1]) == pytest.approx(psnr, abs=0.006)
    # The saved measurement records its set and image size: restoring it needs no flags.
    assert main(["restore", str(measurement), "--output", str(second)]) == 0
    assert "simulated with adapter set 'ratio-50'" in capsys.readouterr().out
    a, b = np.asarray(Image.open(first)), np.asarray(Image.open(second))
    assert a.shape == (40, 48)
    # Each run restores with its own model instance (oneDNN may pick other kernels): a pixel may round
    # to the neighbouring 8-bit level, never further.
    torch.testing.assert_close(
        torch.tensor(b, dtype=torch.int32), torch.tensor(a, dtype=torch.int32), rtol=0, atol=1
    )
    assert main(["restore", str(measurement), "--ratio", "0.25", "--output", str(second)]) == 2
    assert "was simulated with adapter set 'ratio-50'" in capsys.readouterr().err


def test_restore_npy_measurement_with_image_size(tmp_path: Path, assets: Path) -> None:
    model = load_pretrained("cs", root=assets)
    clean = torch.rand(1, 1, 20, 28, generator=torch.Generator().manual_seed(0))
    y = model.physics.measure(clean)
    np.save(tmp_path / "y.npy", y[0].numpy())
    output = tmp_path / "out.png"
    assert main(["restore", str(tmp_path / "y.npy"), "--image-size", "20x28", "--output", str(output)]) == 0
    expected = (model.restore(y, image_size=(20, 28))[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    # The CLI restores with its own model instance (oneDNN may pick other kernels): a pixel may round
    # to the neighbouring 8-bit level, never further.
    saved = torch.tensor(np.asarray(Image.open(output)), dtype=torch.int32)
    torch.testing.assert_close(saved, torch.tensor(expected, dtype=torch.int32), rtol=0, atol=1)


def test_restore_sr_image_and_low_resolution_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = _sample_png(tmp_path / "rgb.png", "astronaut", (42, 50), mode="RGB")
    output = tmp_path / "sr.png"
    assert main(["restore", str(source), "--task", "sr", "--scale", "4", "--output", str(output)]) == 0
    assert "SR protocol" in capsys.readouterr().out
    assert Image.open(output).size == (48, 40)  # HR cropped to a multiple of 4
    assert (
        main(["restore", str(source), "--task", "sr", "--scale", "2", "--measured", "--output", str(output)])
        == 0
    )
    with Image.open(output) as png:
        assert png.size == (100, 84) and png.mode == "RGB"  # the image itself is the measurement: x2


def test_evaluate_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    _sample_png(folder / "camera.png", "camera", (32, 40))
    _sample_png(folder / "coffee.png", "coffee", (24, 24))
    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(folder), "--output-dir", str(out_dir), "--stagewise", "--ratio", "0.1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "adapter set ratio-10" in out and "CS (ISTA-Net)" in out
    assert captured.err == ""  # stderr is no terminal here: no progress bar
    with open(out_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["camera", "coffee", "average"]
    for row in rows[:2]:
        assert re.search(rf"^{row['name']}\s+{float(row['psnr']):.2f}\s+{float(row['ssim']):.4f}$", out, re.M)
    assert (out_dir / "stagewise.png").is_file()
    assert sorted(p.name for p in (out_dir / "images").iterdir()) == ["camera.png", "coffee.png"]


def test_train_prints_both_phases(capsys: pytest.CaptureFixture) -> None:
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    for task in ("cs", "sr", "cassi"):
        assert f"accelerate launch examples/train_{task}.py --mode shared" in out
        assert (
            f"accelerate launch examples/train_{task}.py --mode lorun --backbone runs/{task}/backbone" in out
        )
    assert main(["train", "--task", "sr"]) == 0
    out = capsys.readouterr().out
    assert "train_sr.py" in out and "train_cs.py" not in out and "--scale 4" in out


class _ClosedPipe:
    """A stdout whose reader has gone away (``lorun train | head -1``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_output_pipe_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["train", "--task", "cs"]) == 1
    assert capsys.readouterr().err == ""  # no "lorun train: error: [Errno 32] Broken pipe" line


def test_adapter_set_and_a_selector_together_or_an_absent_device_are_one_clear_error(
    assets: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["info", "--adapter-set", "ratio-10", "--ratio", "0"]) == 2
    assert "--adapter-set names the set; --ratio would select another one" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["info", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "has no usable cuda device" in err and "Traceback" not in err


def test_restore_sr_with_an_all_kernel_set_writes_the_chosen_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from lorun_peft import BlurDownsample, LoRunModel, StageLoRAConfig, UNetConfig, UNetDenoiser
    from lorun_peft.physics import gaussian_kernel
    from lorun_peft.pretrained import save_pretrained_assets

    torch.manual_seed(0)
    kernels = torch.stack([gaussian_kernel(5, 0.5 + 0.2 * i) for i in range(12)])
    denoiser = UNetDenoiser(UNetConfig(in_channels=3, out_channels=3, base_channels=4, depth=2))
    model = LoRunModel.from_components(BlurDownsample(kernels[0], 2), denoiser, num_stages=2)
    model.add_stage_adapters(
        "x2", StageLoRAConfig(num_stages=2, gamma=50), physics=BlurDownsample(kernels[0], 2)
    )
    save_pretrained_assets(
        model, "sr", tmp_path, extra_tensors={"kernels_12.safetensors": {"kernels": kernels}}
    )
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    source = _sample_png(tmp_path / "rgb.png", "astronaut", (40, 40), mode="RGB")
    output = tmp_path / "out.png"
    assert (
        main(
            [
                "restore",
                str(source),
                "--task",
                "sr",
                "--scale",
                "2",
                "--kernel",
                "K7",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "kernel K7 in the all-kernel set x2" in out and "adapter set x2" in out
    assert main(["restore", str(source), "--task", "sr", "--scale", "3"]) == 2
    assert "expected 'x3-k1' or the all-kernel set 'x3'; installed: x2" in capsys.readouterr().err


def _install_tiny_cassi(mask: torch.Tensor, root: Path, monkeypatch: pytest.MonkeyPatch):
    """A 4-band, K = 2 CASSI model on ``mask``, installed as the shipped ``cassi`` model under ``root``."""
    from lorun_peft import CASSI, LoRunModel
    from lorun_peft.denoisers import build_denoiser
    from lorun_peft.pretrained import save_pretrained_assets

    model = LoRunModel.from_components(
        CASSI(mask), build_denoiser("unet", 4, 4, 2), num_stages=2, algorithm="hqs"
    )
    save_pretrained_assets(model, "cassi", root)
    monkeypatch.setenv(PRETRAINED_ENV, str(root))
    return model


def test_restore_real_tsa_measurement_scales_meas_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from scipy.io import savemat

    from lorun_peft import CASSI

    torch.manual_seed(0)
    mask = torch.rand(16, 16)
    model = _install_tiny_cassi(mask, tmp_path, monkeypatch)
    cube = torch.rand(1, 4, 16, 16)
    y = CASSI(mask).A(cube)[0]
    savemat(tmp_path / "scene.mat", {"meas_real": (y / 2).numpy()})  # TSA stores y / (C / 2)
    output = tmp_path / "scene.png"
    assert main(["restore", str(tmp_path / "scene.mat"), "--task", "cassi", "--output", str(output)]) == 0
    assert "meas_real) multiplied by 2" in capsys.readouterr().out
    restored = torch.from_numpy(np.load(output.with_suffix(".npy")))
    with torch.no_grad():
        expected = model.eval().restore(y)
    torch.testing.assert_close(
        restored, expected[0] if expected.ndim == 4 else expected, atol=1e-4, rtol=1e-4
    )


def test_switch_help_shows_no_contradicting_default(capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--help"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.strip().startswith("--no-images"))
    assert "default" not in line


def test_evaluate_cassi_with_the_full_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A model trained on 16x16 mask crops scores a 24x24 cube with --mask (the full aperture)."""
    from scipy.io import savemat

    torch.manual_seed(0)
    full = torch.rand(24, 24)
    _install_tiny_cassi(full[:16, :16].contiguous(), tmp_path / "assets", monkeypatch)
    savemat(tmp_path / "mask.mat", {"mask": full.numpy()})
    np.savez(tmp_path / "cube.npz", cube=np.random.default_rng(0).random((24, 24, 4)).astype("float32"))
    out_dir = tmp_path / "eval"
    argv = [
        "evaluate",
        str(tmp_path / "cube.npz"),
        "--task",
        "cassi",
        "--output-dir",
        str(out_dir),
        "--no-images",
    ]
    assert main(argv) == 2
    assert "--mask" in capsys.readouterr().err  # the model's 16x16 mask does not cover the cube
    assert main([*argv, "--mask", str(tmp_path / "mask.mat")]) == 0
    assert "CASSI (TSA/MST)" in capsys.readouterr().out
    assert main([*argv, "--mask", str(tmp_path / "nope.mat")]) == 2
    assert "nope.mat does not exist" in capsys.readouterr().err


def test_errors_are_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad input: one line, exit 2; any other error: one line, exit 1; --debug or LORUN_DEBUG=1 re-raise."""
    import lorun_peft.cli as cli
    import lorun_peft.cli.info as cli_info

    backbone = assets / "cs" / "backbone"
    damaged = tmp_path / "damaged_backbone"
    shutil.copytree(backbone, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    assert main(["info", "--backbone", str(damaged)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "model.safetensors is damaged or was changed after saving" in err[0], err
    with pytest.raises(ValueError, match="damaged"):
        main(["--debug", "info", "--backbone", str(damaged)])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="damaged"):
        main(["info", "--backbone", str(damaged)])
    monkeypatch.delenv(cli.DEBUG_ENV)

    def boom(args):
        raise RuntimeError("an internal failure")

    monkeypatch.setattr(cli_info, "run_info", boom)  # build_parser binds it when main() runs
    assert main(["info"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "lorun info: internal error: RuntimeError: an internal failure (rerun with --debug for the traceback)"
    ]


def test_export_writes_a_loadable_hub_folder_offline(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lorun_peft import LoRunModel
    from lorun_peft.pretrained import list_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "export"
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"ratio-25": {"Set11": {"psnr": 31.5}}}')
    assert main(["export", str(out), "--repo-id", "me/cs-model", "--metrics", str(metrics)]) == 0
    printed = capsys.readouterr().out
    assert f"upload with: hf upload me/cs-model {out} ." in printed
    sets = list_pretrained(assets)["cs"]
    assert {p.parent.name for p in out.glob("*/adapter_set.json")} == set(sets)
    assert (out / "README.md").read_text().count("31.5") >= 1
    model = LoRunModel.from_pretrained(out)
    assert model.load_adapter(sets[0]) == sets[0]
    capsys.readouterr()
    assert main(["export", str(tmp_path / "bad"), "--repo-id", "a/b/c"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "is not 'owner/name'" in err[0]
    assert not (tmp_path / "bad").exists()
    assert main(["export", str(tmp_path / "bad"), "--repo-id", "me/x", "--ratio", "0.25"]) == 2
    assert "picks adapter sets with --set NAME (repeatable), not --ratio" in capsys.readouterr().err
    sets_only = tmp_path / "sets-only"
    assert (
        main(["export", str(sets_only), "--repo-id", "me/cs-adapters", "--no-backbone", "--set", sets[0]])
        == 0
    )
    assert "base_model: lorun-peft/cs-backbone" in (sets_only / "README.md").read_text()
    assert main(["export", str(sets_only), "--repo-id", "me/cs-adapters", "--no-backbone"]) == 2  # not empty
    assert "is not empty" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_evaluate_shows_a_progress_bar_on_a_terminal_unless_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    _sample_png(folder / "camera.png", "camera", (32, 40))
    _sample_png(folder / "coffee.png", "coffee", (24, 24))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["evaluate", str(folder), "--output-dir", str(tmp_path / "eval"), "--no-images"]
    assert main([*argv, "--quiet"] if quiet else argv) == 0
    text = terminal.getvalue()
    if quiet:
        assert text == ""
    else:
        assert "evaluate: 100%" in text and "2/2" in text and "coffee:" in text


def test_unreadable_or_complex_measurements_and_a_misplaced_image_size(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors.torch import save_file

    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    complex_y = tmp_path / "complex.npy"
    np.save(complex_y, np.ones((256, 2, 2), np.complex64))
    complex_st = tmp_path / "complex.safetensors"
    save_file({"measurement": torch.ones(1, 16, 2, 2, dtype=torch.complex64)}, str(complex_st))
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as handle:
        np.savez(handle, y=np.ones((16, 2, 2), np.float32))
    png = _sample_png(tmp_path / "img.png", "camera", (32, 32))
    cases = [
        (["restore", str(empty)], "cannot read"),
        (["restore", str(complex_y)], "expected a real numeric array"),
        (["restore", str(complex_st)], "expected a real numeric tensor"),
        (["restore", str(archive)], "is not a single .npy array"),
        (
            ["restore", str(png), "--image-size", "1x1"],
            "--image-size crops the estimate of a saved measurement",
        ),
    ]
    for argv, message in cases:
        assert main([*argv, "--output", str(tmp_path / "out.png")]) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_cassi_demo_compares_with_gap_tv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from lorun_peft import StageLoRAConfig
    from lorun_peft.pretrained import save_pretrained_assets

    torch.manual_seed(0)
    model = _install_tiny_cassi((torch.rand(32, 32) > 0.5).float(), tmp_path / "assets", monkeypatch)
    model.add_stage_adapters("mask-28", StageLoRAConfig(num_stages=2, gamma=50))  # the name the demo loads
    save_pretrained_assets(model, "cassi", tmp_path / "assets")
    output = tmp_path / "cassi.png"
    assert main(["demo", "--task", "cassi", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    rows = r"^(initial estimate \(shift back\)|GAP-TV \(classical\)|LoRun-2)\s+([\d.]+)"
    scores = {label: float(psnr) for label, psnr in re.findall(rows, out, re.M)}
    assert set(scores) == {"initial estimate (shift back)", "GAP-TV (classical)", "LoRun-2"}, out
    assert scores["GAP-TV (classical)"] > scores["initial estimate (shift back)"] + 3, scores
    assert output.is_file()

"""Smoke runs of the example scripts (both phases, then evaluation) and their bad-data errors.

The scripts' ``main(argv)`` functions are called in-process (one subprocess checks the command line
itself). ``LORUN_DATA_DIR`` points at an empty folder, so the runs use the shipped sample images, a
synthetic cube and mask and synthetic SR kernels: the tests pass without ``../shared``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(autouse=True)
def _no_shared_data(tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("LORUN_DATA_DIR", str(empty))
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("task", "set_name"),
    [
        ("cs", "ratio-25"),
        ("sr", "x2-k1"),
        ("cassi", "mask-28"),
        ("inpainting", "missing-70"),
        ("denoising", "sigma-25"),
    ],
)
def test_smoke_both_phases_then_evaluate(task, set_name, tmp_path):
    train, evaluate = _script(f"train_{task}"), _script("evaluate")
    phase1, phase2, report = tmp_path / "phase1", tmp_path / "phase2", tmp_path / "eval"
    assert train(["--smoke", "--output_dir", str(phase1)]) == 0
    assert (phase1 / "config.json").is_file() and (phase1 / "model.safetensors").is_file()
    if task == "denoising":  # the task mode fixes the training noise: sigma 25 on the 0-255 scale
        assert json.loads((phase1 / "training_config.json").read_text())["noise_sigma"] == 25 / 255
    assert train(["--smoke", "--mode", "lorun", "--backbone", str(phase1), "--output_dir", str(phase2)]) == 0
    assert (phase2 / set_name / "adapter_set.json").is_file()
    summary = json.loads((phase2 / "run_summary.json").read_text())
    assert summary["mode"] == "lorun" and 0 < summary["trainable_params"] < summary["stored_params"]
    argv = [
        "--smoke",
        "--backbone",
        str(phase1),
        "--adapter_set",
        str(phase2),
        "--adapter_set_name",
        set_name,
    ]
    assert evaluate([*argv, "--output_dir", str(report), "--stagewise"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["metadata"]["adapter_set"] == set_name
    assert len(metrics["items"]) == 2 and np.isfinite(metrics["mean_psnr"])
    assert len(metrics["stage_psnr"]) == 2  # --smoke caps K at 2
    assert (report / "metrics.csv").read_text().splitlines()[-1].startswith("average,")
    assert (report / "stagewise.png").stat().st_size > 0
    images = sorted(p.name for p in (report / "images").iterdir())
    expected = ["astronaut.png", "camera.png"]
    if task == "cassi":
        expected = ["astronaut.npz", "astronaut.png", "camera.npz", "camera.png"]
    assert images == expected


def test_block_mode_evaluates_without_adapter_set(tmp_path):
    assert _script("train_cs")(["--smoke", "--mode", "block", "--output_dir", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["mode"] == "block" and config["physics"]["ratio"] == 0.25
    assert (
        _script("evaluate")(
            ["--smoke", "--backbone", str(tmp_path / "b"), "--output_dir", str(tmp_path / "e")]
        )
        == 0
    )
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["metadata"]["mode"] == "block"


def test_script_help_and_bad_argument_from_the_command_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORUN_DATA_DIR": str(tmp_path)}
    script = str(REPO / "examples" / "train_sr.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env)
    assert help_text.returncode == 0
    for option in ("--kernel", "--scale", "--mode", "--backbone", "--push_to_hub", "--smoke", "--max_steps"):
        assert option in help_text.stdout
    bad = subprocess.run(
        [sys.executable, script, "--kernel", "K13", "--smoke", "--output_dir", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("train_sr: error: kernel must be K1..K12")


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "expected an error line on stderr"
    return lines[-1]


def test_empty_folder_is_one_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = _script("train_cs")(["--train_data", str(empty), "--output_dir", str(tmp_path / "o")])
    assert code == 2
    assert _error(capsys) == f"train_cs: error: no image files in {empty}; expected files ending in " + (
        ".png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .gif, .ppm, .pgm"
    )


def test_corrupt_image_names_the_file(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert _script("train_cs")(["--train_data", str(folder), "--output_dir", str(tmp_path / "o")]) == 2
    line = _error(capsys)
    assert line.startswith("train_cs: error: cannot decode image file ") and "broken.png" in line


def test_crop_larger_than_an_image_names_the_file(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((48, 80, 3), np.uint8)).save(folder / "small.png")
    argv = ["--train_data", str(folder), "--patch_size", "64", "--output_dir", str(tmp_path / "o")]
    assert _script("train_sr")(argv) == 2
    assert "kernels_12.mat not found" in _error(capsys)  # never a silent fallback to stand-in kernels
    from scipy.io import savemat

    from lorun_peft.physics import synthetic_kernels_12

    cell = np.empty((1, 12), dtype=object)
    for index, kernel in enumerate(synthetic_kernels_12()):
        cell[0, index] = kernel.numpy()
    savemat(tmp_path / "kernels_12.mat", {"kernels": cell})
    assert _script("train_sr")([*argv, "--kernels_file", str(tmp_path / "kernels_12.mat")]) == 2
    line = _error(capsys)
    assert "patch size 64 is larger than image file" in line and "small.png (48x80)" in line


def test_cube_band_count_mismatch_names_the_file(tmp_path, capsys):
    folder = tmp_path / "cubes"
    folder.mkdir()
    np.savez(folder / "odd.npz", cube=np.random.default_rng(0).random((40, 40, 31)).astype(np.float32))
    argv = ["--train_data", str(folder), "--smoke", "--output_dir", str(tmp_path / "o")]
    assert _script("train_cassi")(argv) == 2
    line = _error(capsys)
    assert "odd.npz has 31 bands" in line and "expected 28" in line


def test_evaluate_cube_with_wrong_band_count(tmp_path, capsys):
    assert _script("train_cassi")(["--smoke", "--output_dir", str(tmp_path / "m")]) == 0
    np.savez(tmp_path / "ten.npz", cube=np.full((64, 64, 10), 0.5, np.float32))
    argv = ["--backbone", str(tmp_path / "m"), "--test_data", str(tmp_path / "ten.npz"), "--smoke"]
    assert _script("evaluate")([*argv, "--output_dir", str(tmp_path / "e")]) == 2
    line = _error(capsys)
    assert "ten.npz has 10 bands" in line and "expected 28" in line


def test_lorun_needs_a_backbone(tmp_path, capsys):
    assert _script("train_cs")(["--smoke", "--mode", "lorun", "--output_dir", str(tmp_path)]) == 2
    assert "--mode lorun needs --backbone" in _error(capsys)


def test_phase2_adapter_init_and_step_sizes_only(tmp_path):
    from safetensors.torch import load_file

    train = _script("train_sr")
    backbone = tmp_path / "phase1"
    assert train(["--smoke", "--output_dir", str(backbone)]) == 0
    runs = {
        "default": [],
        "kaiming": ["--adapter_init", "kaiming"],
        "steps": ["--train_adapters", "False"],
    }
    for name, extra in runs.items():
        argv = ["--smoke", "--mode", "lorun", "--backbone", str(backbone), *extra]
        assert train([*argv, "--output_dir", str(tmp_path / name)]) == 0
    inits = {
        name: json.loads((tmp_path / name / "x2-k1" / "stage_00" / "adapter_config.json").read_text())[
            "init_lora_weights"
        ]
        for name in runs
    }
    assert inits == {"default": "gaussian", "kaiming": True, "steps": "gaussian"}
    trained = load_file(tmp_path / "default" / "x2-k1" / "stage_00" / "adapter_model.safetensors")
    frozen = load_file(tmp_path / "steps" / "x2-k1" / "stage_00" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in trained.items())
    assert all(v.abs().max() == 0 for k, v in frozen.items() if k.endswith("lora_B.weight"))
    summary = json.loads((tmp_path / "steps" / "run_summary.json").read_text())
    assert summary["trainable_params"] == 2  # rho_1, rho_2: the smoke run's K = 2 step sizes
    phase1_rho = load_file(backbone / "model.safetensors")["task.steps.raw_rho"]
    set_rho = load_file(tmp_path / "steps" / "x2-k1" / "task.safetensors")["steps.raw_rho"]
    assert set_rho.shape == phase1_rho.shape and not torch.equal(set_rho, phase1_rho)  # the steps trained


def test_cassi_eval_during_training_uses_the_full_mask(tmp_path):
    cube = np.random.default_rng(0).random((48, 48, 28)).astype(np.float32)  # larger than the 32 crops
    np.savez(tmp_path / "scene.npz", cube=cube)
    argv = ["--smoke", "--eval_data", str(tmp_path / "scene.npz"), "--output_dir", str(tmp_path / "run")]
    assert _script("train_cassi")(argv) == 0
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert np.isfinite(summary["eval"]["psnr"]) and 0 < summary["eval"]["ssim"] <= 1


def test_cassi_trains_on_full_width_strips(tmp_path):
    """--patch_height: the operator, the mask crops and the patches are all 16x32 strips."""
    argv = ["--smoke", "--patch_height", "16", "--output_dir", str(tmp_path / "run")]
    assert _script("train_cassi")(argv) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["physics"]["mask_shape"] == [16, 32]
    assert "a new random 16x32 crop per batch" in (tmp_path / "run" / "run_summary.json").read_text()


def test_cs_phase2_at_a_new_ratio_starts_phi_from_the_backbone(tmp_path, capsys):
    from safetensors.torch import load_file

    from lorun_peft.physics import derive_sampling_matrix

    train = _script("train_cs")
    backbone = tmp_path / "phase1"
    assert train(["--smoke", "--output_dir", str(backbone)]) == 0  # 25 %: 256 rows
    backbone_phi = load_file(backbone / "model.safetensors")["task.physics.Phi"]
    derived = derive_sampling_matrix(backbone_phi, 103)  # 10 % of 32x32 blocks
    distances = {}
    for init in ("backbone", "random"):
        argv = [
            "--smoke",
            "--mode",
            "lorun",
            "--backbone",
            str(backbone),
            "--ratio",
            "0.1",
            "--phi_init",
            init,
        ]
        assert train([*argv, "--output_dir", str(tmp_path / init)]) == 0
        phi = load_file(tmp_path / init / "ratio-10" / "task.safetensors")["physics.Phi"]
        assert phi.shape == derived.shape
        distances[init] = ((phi - derived).norm() / derived.norm()).item()
    assert distances["backbone"] < 0.1 < distances["random"], distances  # 2 smoke steps move it a little
    assert train(["--smoke", "--mode", "lorun", "--backbone", str(backbone), "--phi_init", "svd"]) == 2
    assert "--phi_init must be one of ('backbone', 'random')" in _error(capsys)


def test_scripts_default_to_the_measured_fastest_precision_and_layout():
    from lorun_peft.recipes import SCRIPT_TRAINING_DEFAULTS, parse_training_args

    *_, training = parse_training_args("cs", ["--output_dir", "x"])
    assert (training.mixed_precision, training.channels_last) == ("auto", True)
    assert SCRIPT_TRAINING_DEFAULTS == {
        "mixed_precision": "auto",
        "channels_last": True,
        "checkpoint_every": 500,
    }
    *_, plain = parse_training_args("cs", ["--mixed_precision", "no", "--channels_last", "False"])
    assert (plain.mixed_precision, plain.channels_last) == ("no", False)


def test_warm_start_continues_a_saved_backbone_with_a_new_schedule(tmp_path, capsys):
    from safetensors.torch import load_file

    train = _script("train_cs")
    first, second = tmp_path / "leg1", tmp_path / "leg2"
    assert train(["--smoke", "--output_dir", str(first)]) == 0
    argv = ["--smoke", "--warm_start", str(first), "--learning_rate", "1e-9", "--output_dir", str(second)]
    assert train(argv) == 0  # Adam moves each weight by about lr per step: the leg starts from leg 1
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-7, rtol=0, msg=key)
    fresh = tmp_path / "fresh"
    assert train(["--smoke", "--seed", "1", "--learning_rate", "1e-9", "--output_dir", str(fresh)]) == 0
    assert not torch.allclose(
        load_file(fresh / "model.safetensors")["task.physics.Phi"], before["task.physics.Phi"]
    )
    assert (
        train(["--smoke", "--warm_start", str(first), "--mode", "block", "--output_dir", str(tmp_path / "b")])
        == 2
    )
    assert "is a 'shared' model, but --mode is 'block'" in _error(capsys)
    argv = ["--smoke", "--warm_start", str(first), "--ratio", "0.1", "--output_dir", str(tmp_path / "r")]
    assert train(argv) == 2
    assert "was trained with physics" in _error(capsys)


def _set_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {f"task.{k}": v for k, v in load_file(folder / "task.safetensors").items()}
    for stage in sorted(folder.glob("stage_*")):
        tensors.update(
            {f"{stage.name}.{k}": v for k, v in load_file(stage / "adapter_model.safetensors").items()}
        )
    return tensors


def test_warm_start_continues_a_saved_adapter_set_with_a_new_schedule(tmp_path, capsys):
    train = _script("train_cs")
    backbone, leg1, leg2 = tmp_path / "backbone", tmp_path / "leg1", tmp_path / "leg2"
    assert train(["--smoke", "--output_dir", str(backbone)]) == 0
    phase2 = ["--smoke", "--mode", "lorun", "--backbone", str(backbone)]
    assert train([*phase2, "--learning_rate", "1e-2", "--output_dir", str(leg1)]) == 0
    argv = [
        *phase2,
        "--warm_start",
        str(leg1 / "ratio-25"),
        "--learning_rate",
        "1e-9",
        "--output_dir",
        str(leg2),
    ]
    assert train(argv) == 0  # Adam moves each weight by about lr per step: the leg starts from leg 1
    before, after = _set_tensors(leg1 / "ratio-25"), _set_tensors(leg2 / "ratio-25")
    assert before.keys() == after.keys() and any(".lora_B." in key for key in before)
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-7, rtol=0, msg=key)
    assert any(v.abs().max() > 1e-4 for k, v in before.items() if ".lora_B." in k)  # leg 1 trained them
    fresh = tmp_path / "fresh"
    assert train([*phase2, "--learning_rate", "1e-9", "--output_dir", str(fresh)]) == 0
    lora_b = [k for k in before if ".lora_B." in k]
    assert all(_set_tensors(fresh / "ratio-25")[k].abs().max() < 1e-6 for k in lora_b)  # fresh: B = 0
    # the folder holding the set works too; a backbone, another set name or other physics are refused
    assert train([*phase2, "--warm_start", str(leg1), "--output_dir", str(tmp_path / "f")]) == 0
    assert train([*phase2, "--warm_start", str(backbone), "--output_dir", str(tmp_path / "g")]) == 2
    assert "holds no adapter set 'ratio-25'" in _error(capsys)
    argv = [
        *phase2,
        "--warm_start",
        str(leg1 / "ratio-25"),
        "--ratio",
        "0.1",
        "--output_dir",
        str(tmp_path / "h"),
    ]
    assert train(argv) == 2
    assert "holds adapter set 'ratio-25', expected 'ratio-10'" in _error(capsys)
    assert train([*argv, "--adapter_set_name", "ratio-25"]) == 2
    assert "was trained with physics" in _error(capsys)


def test_scripts_checkpoint_every_500_steps_by_default():
    from lorun_peft.recipes import parse_training_args

    *_, training = parse_training_args("cs", [])
    assert training.checkpoint_every == 500 and training.mixed_precision == "auto"
    *_, training = parse_training_args("cs", ["--checkpoint_every", "0"])
    assert training.checkpoint_every == 0


@pytest.mark.parametrize(
    ("script", "shown", "hidden"),
    [
        (
            "train_cassi",
            ["--mask", "--band_gain", "--rgb_lift_data", "--patch_height"],
            ["--ratio", "--kernel", "--phi_matrix"],
        ),
        ("train_cs", ["--ratio", "--phi_matrix"], ["--kernel", "--mask", "--band_gain", "--patch_height"]),
        ("train_sr", ["--kernel", "--scale"], ["--ratio", "--mask", "--rgb_lift_data", "--patch_height"]),
    ],
)
def test_help_lists_only_the_scripts_own_task_options(script, shown, hidden, capsys):
    with pytest.raises(SystemExit):
        _script(script)(["--help"])
    flags = {
        line.split()[0].rstrip(",")
        for line in capsys.readouterr().out.splitlines()
        if line.strip().startswith("--")
    }
    assert set(shown) <= flags and not set(hidden) & flags


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({"HF_HUB_OFFLINE": "1"}, [], "HF_HUB_OFFLINE is set"),
        ({"HF_TOKEN": ""}, ["--hub_model_id", "bad id/with space"], "is not 'owner/name' or 'name'"),
    ],
)
def test_push_to_hub_fails_before_training(tmp_path, monkeypatch, capsys, env, extra, message):
    """A push that cannot start is one line and exit 2 in the first second, before any training step."""
    import lorun_peft.hub.files as hub_files

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hub_files, "is_offline", lambda: env.get("HF_HUB_OFFLINE") == "1")
    out = tmp_path / "o"
    argv = ["--smoke", "--push_to_hub", *extra, "--output_dir", str(out)]
    assert _script("train_cs")(argv) == 2
    assert message in _error(capsys)
    assert not out.exists()  # nothing trained, nothing written


def test_push_to_hub_without_a_token_fails_before_training(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    import lorun_peft.hub.files as hub_files

    monkeypatch.setattr(hub_files, "is_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "o"
    assert (
        _script("train_cs")(["--smoke", "--push_to_hub", "--hub_model_id", "me/cs", "--output_dir", str(out)])
        == 2
    )
    assert "needs a Hugging Face token" in _error(capsys)
    assert not out.exists()


def test_two_sets_in_one_output_folder_are_refused_before_training(tmp_path, capsys):
    """A second set would append to the first log.jsonl and resume its checkpoint: one folder per run."""
    train = _script("train_cs")
    backbone = tmp_path / "phase1"
    assert train(["--smoke", "--output_dir", str(backbone)]) == 0
    sets = tmp_path / "sets"
    argv = ["--smoke", "--mode", "lorun", "--backbone", str(backbone), "--output_dir", str(sets)]
    assert train([*argv, "--ratio", "0.25"]) == 0
    assert json.loads((sets / "run_target.json").read_text())["adapter_set"] == "ratio-25"
    log_before = (sets / "log.jsonl").read_text()
    capsys.readouterr()
    assert train([*argv, "--ratio", "0.5"]) == 2
    message = _error(capsys)
    assert "holds a cs --mode lorun run of adapter set 'ratio-25'" in message
    assert f"--output_dir {sets}/ratio-50" in message
    assert (sets / "log.jsonl").read_text() == log_before and not (sets / "ratio-50").exists()
    assert train([*argv, "--ratio", "0.25", "--max_steps", "3"]) == 0  # the same set again: allowed
    assert train([*argv[:-1], str(sets / "ratio-50"), "--ratio", "0.5"]) == 0
    capsys.readouterr()
    assert train(["--smoke", "--mode", "shared", "--output_dir", str(sets)]) == 2  # phase 1 there: refused
    assert "this is a cs --mode shared run" in _error(capsys)


def test_resuming_another_sets_checkpoint_names_the_sets(tmp_path, capsys):
    """The library's resume check says whose checkpoint it is, not 'backbone fingerprint mismatch'."""
    from lorun_peft.training.checkpoint import list_checkpoints

    train = _script("train_cs")
    backbone = tmp_path / "phase1"
    assert train(["--smoke", "--output_dir", str(backbone)]) == 0
    argv = ["--smoke", "--mode", "lorun", "--backbone", str(backbone), "--checkpoint_every", "2"]
    assert train([*argv, "--ratio", "0.25", "--output_dir", str(tmp_path / "r25")]) == 0
    checkpoint = list_checkpoints(tmp_path / "r25")[-1]
    resume = ["--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "r50")]
    capsys.readouterr()
    assert train([*argv, "--ratio", "0.5", *resume]) == 2
    assert "trained adapter set(s) ratio-25, this run trains ratio-50" in _error(capsys)


def test_the_split_is_printed_and_a_test_scene_in_training_is_flagged(tmp_path, capsys):
    cubes = tmp_path / "cubes"
    cubes.mkdir()
    rng = np.random.default_rng(0)
    for name in ("scene_a", "scene_b"):
        np.savez(cubes / f"{name}.npz", cube=rng.random((64, 64, 28)).astype(np.float32))
    train = _script("train_cassi")
    base = ["--smoke", "--max_steps", "1", "--patch_size", "32"]
    held_out = [*base, "--train_data", str(cubes / "scene_a.npz"), "--eval_data", str(cubes / "scene_b.npz")]
    assert train([*held_out, "--output_dir", str(tmp_path / "ok")]) == 0
    captured = capsys.readouterr()
    assert f"training on cubes {cubes / 'scene_a.npz'}" in captured.out
    assert f"evaluating on {cubes / 'scene_b.npz'}" in captured.out and "WARNING" not in captured.err
    leaky = [*base, "--train_data", str(cubes), "--eval_data", str(cubes / "scene_b.npz")]
    assert train([*leaky, "--output_dir", str(tmp_path / "leak")]) == 0
    assert "1 evaluation file(s) are also training data (scene_b.npz)" in capsys.readouterr().err


def test_a_run_that_failed_before_training_does_not_claim_its_folder(tmp_path, capsys):
    """Only a folder with a log, checkpoints or a summary belongs to a run; a failed start leaves none."""
    train = _script("train_cs")
    out = tmp_path / "run"
    assert (
        train(["--smoke", "--mode", "lorun", "--backbone", str(tmp_path / "nope"), "--output_dir", str(out)])
        == 2
    )
    assert train(["--smoke", "--output_dir", str(out)]) == 0  # the corrected command, another target
    (out / "run_target.json").write_text("{not json")
    capsys.readouterr()
    assert train(["--smoke", "--mode", "lorun", "--backbone", str(out), "--output_dir", str(out)]) == 2
    assert "run_target.json is not readable JSON" in _error(capsys)

"""The training loop on the stand-in CS unfolding model: learning, both phases, exact resume, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from standin import TinyUnfolding, smooth_patches
from torch import nn

from lorun_peft.training import (
    StepBatches,
    UnfoldingTrainingConfig,
    evaluate_psnr,
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
    train,
)
from lorun_peft.training.checkpoint import tmp_checkpoint_dir

torch.set_num_threads(1)


def _config(tmp_path: Path, **overrides) -> UnfoldingTrainingConfig:
    values = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 30,
        "learning_rate": 3e-3,
        "batch_size": 4,
        "log_every": 1,
        "show_progress": False,
        "noise_sigma": 0.01,
        "seed": 5,
    }
    values.update(overrides)
    return UnfoldingTrainingConfig(**values)


def _model(**kwargs) -> TinyUnfolding:
    torch.manual_seed(0)
    return TinyUnfolding(**kwargs)


def test_phase1_lowers_the_loss_and_logs(tmp_path):
    patches = smooth_patches(64, 16)
    held_out = smooth_patches(4, 16, seed=9)
    model = _model()
    before = evaluate_psnr(model, held_out)["psnr"]
    result = train(
        model, patches, _config(tmp_path, eval_every=10), eval_fn=lambda m: evaluate_psnr(m, held_out)
    )
    losses = result.losses
    assert len(losses) == 30 and result.global_step == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3
    assert [record["step"] for record in result.eval_history] == [10, 20, 30]
    assert result.eval_history[-1]["eval"]["psnr"] > before + 3.0
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == list(range(1, 31))
    assert train_lines[0]["lr"] == pytest.approx(3e-3)
    assert train_lines[-1]["lr"] < 1e-4  # cosine decay down to ~0 at the last step
    assert all(line["step_time_s"] > 0 for line in train_lines)
    assert json.loads((tmp_path / "run" / "training_config.json").read_text())["max_steps"] == 30


def test_phase2_trains_only_what_requires_grad(tmp_path):
    patches = smooth_patches(64, 16)
    model = train(_model(), patches, _config(tmp_path, max_steps=15)).model
    model.add_stage_adapters()
    frozen = {name: p.detach().clone() for name, p in model.nets.named_parameters()}
    rho_before = model.rho.detach().clone()
    result = train(model, patches, _config(tmp_path, max_steps=15, output_dir=str(tmp_path / "p2")))
    for name, param in result.model.nets.named_parameters():
        assert torch.equal(param, frozen[name]), name
    assert not torch.equal(result.model.rho, rho_before)
    assert any(adapter.weight.abs().sum() > 0 for adapter in result.model.adapters)
    assert result.losses[-1] < result.losses[0]


def test_block_mode_and_float64(tmp_path):
    patches = smooth_patches(32, 16).double()
    model = _model(block_mode=True).double()
    result = train(model, patches, _config(tmp_path, max_steps=10))
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert result.losses[-1] < result.losses[0]


def _run_with_checkpoints(tmp_path: Path, name: str, **overrides):
    patches = smooth_patches(64, 16)
    config = _config(
        tmp_path,
        output_dir=str(tmp_path / name),
        max_steps=12,
        checkpoint_every=4,
        gradient_accumulation_steps=2,
        **overrides,
    )
    return train(_model(dropout=0.2), patches, config), patches, config


def test_resume_matches_the_uninterrupted_run_and_checkpoints_rotate(tmp_path, capsys):
    full, patches, config = _run_with_checkpoints(tmp_path, "full", save_total_limit=2)
    names = [path.name for path in list_checkpoints(tmp_path / "full")]
    assert names == ["checkpoint-8", "checkpoint-12"]
    checkpoint = tmp_path / "full" / "checkpoint-8"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "rng_state_0.safetensors",
        "trainer_state.json",
    ]
    state = read_trainer_state(checkpoint)
    assert state["step"] == 8 and state["scheduler"]["last_epoch"] == 8
    optim = load_file(str(checkpoint / "optimizer.safetensors"))
    assert {"state/rho/exp_avg", "state/rho/exp_avg_sq", "state/rho/step"} <= set(optim)
    assert optim["state/rho/step"].item() == 8

    resumed_config = UnfoldingTrainingConfig(
        **{
            **config.to_dict(),
            "output_dir": str(tmp_path / "resumed"),
            "resume_from_checkpoint": str(checkpoint),
        }
    )
    capsys.readouterr()
    resumed = train(_model(dropout=0.2), patches, resumed_config)
    assert resumed.resumed_from == checkpoint
    assert f"resuming from {checkpoint} (step 8 of 12)" in capsys.readouterr().out
    assert [r["step"] for r in resumed.log_history] == [9, 10, 11, 12]
    # Two model instances may be given different oneDNN kernels: the same weights up to float rounding
    # (one step more or fewer, or another batch, moves them by orders of magnitude more).
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # The losses are forward outputs of two model instances, which may get different oneDNN kernels.
    torch.testing.assert_close(resumed.losses, full.losses[8:], rtol=1e-5, atol=1e-7)


def test_resume_latest_truncates_the_log_and_ignores_temp_dirs(tmp_path):
    full, patches, config = _run_with_checkpoints(tmp_path, "run", save_total_limit=None)
    run = tmp_path / "run"
    reference = {name: value.clone() for name, value in full.model.state_dict().items()}
    # Simulate a crash after step 10: checkpoint-12 gone, log records past it, a half-written temp dir.
    import shutil

    shutil.rmtree(run / "checkpoint-12")
    tmp = tmp_checkpoint_dir(run, 16)
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(run) == run / "checkpoint-8"
    config = UnfoldingTrainingConfig(**{**config.to_dict(), "resume_from_checkpoint": "latest"})
    resumed = train(_model(dropout=0.2), patches, config)
    assert resumed.resumed_from == run / "checkpoint-8"
    resumed_state = resumed.model.state_dict()
    assert resumed_state.keys() == reference.keys()
    for name, value in reference.items():  # up to float rounding, as above
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path):
    result = train(
        _model(), smooth_patches(16, 16), _config(tmp_path, max_steps=2, resume_from_checkpoint="latest")
    )
    assert result.resumed_from is None and result.global_step == 2


def test_resume_errors_are_clear(tmp_path):
    full, patches, config = _run_with_checkpoints(tmp_path, "run")
    checkpoint = str(tmp_path / "run" / "checkpoint-12")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint folder"):
        train(_model(), patches, _config(tmp_path, resume_from_checkpoint=str(tmp_path / "nope")))
    other = _model(dropout=0.2)
    other.add_stage_adapters()
    with pytest.raises(ValueError, match="does not match the model's trainable parameters"):
        train(other, patches, _config(tmp_path, max_steps=12, resume_from_checkpoint=checkpoint))
    # The same trainable parameters on other frozen weights (another backbone): the fingerprint says so.
    phase2 = _model(dropout=0.2)
    phase2.add_stage_adapters()
    train(
        phase2, patches, _config(tmp_path, output_dir=str(tmp_path / "p2"), max_steps=4, checkpoint_every=4)
    )
    torch.manual_seed(1)
    another_backbone = TinyUnfolding(dropout=0.2)
    another_backbone.add_stage_adapters()
    p2_checkpoint = str(tmp_path / "p2" / "checkpoint-4")
    with pytest.raises(ValueError, match="different frozen parameters"):
        train(another_backbone, patches, _config(tmp_path, max_steps=4, resume_from_checkpoint=p2_checkpoint))
    wider = _model(width=4, dropout=0.2)
    with pytest.raises(ValueError, match=r"nets\.0\.0\.\w+ is \(8,.*the model expects \(4,"):
        train(wider, patches, _config(tmp_path, max_steps=12, resume_from_checkpoint=checkpoint))
    with pytest.raises(ValueError, match="max_steps=5"):
        train(_model(dropout=0.2), patches, _config(tmp_path, max_steps=5, resume_from_checkpoint=checkpoint))


def test_bad_models_and_sources(tmp_path):
    patches = smooth_patches(8, 16)
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        train(frozen, patches, _config(tmp_path))
    with pytest.raises(ValueError, match="model.physics must be an operator"):
        train(nn.Conv2d(1, 1, 3), patches, _config(tmp_path))
    with pytest.raises(ValueError, match=r"must be \(N, C, H, W\)"):
        train(_model(), patches[0], _config(tmp_path))
    with pytest.raises(ValueError, match="empty dataset"):
        train(_model(), [], _config(tmp_path))
    with pytest.raises(ValueError, match="must be a \\(N, C, H, W\\) tensor, a map-style dataset"):
        train(_model(), 3, _config(tmp_path))
    with pytest.raises(ValueError, match="must return a \\(4, C, H, W\\) tensor"):
        train(_model(), lambda n, g: patches[:2], _config(tmp_path))
    with pytest.raises(ValueError, match="config must be an UnfoldingTrainingConfig"):
        train(_model(), patches, {"max_steps": 3})


def test_step_batches_are_pure_functions_of_seed_step_rank():
    patches = smooth_patches(32, 16)
    items = [{"pixel_values": p} for p in patches]
    for source in (patches, items, lambda n, g: patches[torch.randint(32, (n,), generator=g)]):
        rank0 = StepBatches(source, 4, seed=1, rank=0, accumulation=2)
        again = StepBatches(source, 4, seed=1, rank=0, accumulation=2)
        rank1 = StepBatches(source, 4, seed=1, rank=1, accumulation=2)
        assert torch.equal(rank0[7], again[7])  # no iterator state: any step, any order
        assert not torch.equal(rank0[7], rank1[7])
        assert not torch.equal(rank0[6], rank0[7])
        assert rank0[3].shape == (4, 1, 16, 16)
    with pytest.raises(ValueError, match="'pixel_values' key"):
        StepBatches([{"image": patches[0]}], 2, 0, 0, 1)[0]


class _EpochDataset:
    """Item i depends on (epoch, i), like RandomPatchDataset."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((1, 2, 2), float(self.epoch * 10 + index))


def test_datasets_with_set_epoch_get_fresh_items_per_step():
    batches = StepBatches(_EpochDataset(), 3, seed=0, rank=0, accumulation=1)
    assert torch.all(batches[5] >= 50) and torch.all(batches[5] < 60)
    assert torch.all(batches[2] < 30)


def test_evaluate_psnr_matches_a_direct_computation():
    model = _model()
    images = smooth_patches(3, 16, seed=4)
    with torch.no_grad():
        out = model(model.physics.measure(images)).images.clamp(0, 1)
    mse = ((out - images) ** 2).flatten(1).mean(1)
    expected = float((10 * torch.log10(1 / mse)).mean())
    result = evaluate_psnr(model, list(images), compute_ssim=True)
    assert result["psnr"] == pytest.approx(expected, rel=1e-5)
    assert 0 < result["ssim"] <= 1 and math.isfinite(result["ssim"])
    cs = evaluate_psnr(model, images, protocol="cs")
    assert cs["psnr"] == pytest.approx(expected, rel=1e-5)  # same data on [0, 255]
    assert model.training
    with pytest.raises(ValueError, match="protocol must be 'plain' or 'cs'"):
        evaluate_psnr(model, images, protocol="matlab")


def test_noise_range_draws_one_std_per_sample_within_the_bounds():
    from lorun_peft.physics import Denoising
    from lorun_peft.training.loop import _measure

    config = UnfoldingTrainingConfig(noise_sigma=0.01, noise_sigma_max=0.2)
    clean = torch.zeros(64, 1, 32, 32)
    y = _measure(Denoising(), clean, config, torch.Generator().manual_seed(0))
    stds = y.flatten(1).std(dim=1)
    assert stds.min() > 0.005 and stds.max() < 0.21
    assert stds.max() - stds.min() > 0.1  # really one level per sample, spread over the range
    again = _measure(Denoising(), clean, config, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)
    fixed = UnfoldingTrainingConfig(noise_sigma=0.05)
    stds = _measure(Denoising(), clean, fixed, torch.Generator().manual_seed(0)).flatten(1).std(dim=1)
    assert torch.allclose(stds, torch.full_like(stds, 0.05), rtol=0.1)


def test_noise_range_and_time_budget_are_validated():
    with pytest.raises(ValueError, match="noise_sigma_max"):
        UnfoldingTrainingConfig(noise_sigma=0.1, noise_sigma_max=0.05)
    with pytest.raises(ValueError, match="noise_sigma_max"):
        UnfoldingTrainingConfig(noise_sigma_max=float("inf"))
    with pytest.raises(ValueError, match="max_train_time_s"):
        UnfoldingTrainingConfig(max_train_time_s=0)


def test_time_budget_stops_early_and_saves_like_the_end(tmp_path):
    from lorun_peft.training.checkpoint import latest_checkpoint

    config = UnfoldingTrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=500,
        batch_size=2,
        show_progress=False,
        max_train_time_s=1e-6,
        checkpoint_every=100,
        log_every=100,
    )
    evals = []
    result = train(
        _model(), smooth_patches(16, 16), config, eval_fn=lambda m: evals.append(1) or {"psnr": 1.0}
    )
    assert result.global_step == 1 and result.stopped_early
    assert evals == [1]  # evaluated at the step it stopped
    assert latest_checkpoint(config.output_dir).name == "checkpoint-1"
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert any('"step": 1' in line and '"loss"' in line for line in lines)


def test_a_fresh_start_in_a_used_folder_begins_a_new_log(tmp_path):
    config = _config(tmp_path, max_steps=4, log_every=1)
    train(_model(), smooth_patches(16, 16), config)
    train(_model(), smooth_patches(16, 16), config)  # no checkpoint to resume: starts over at step 1
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_step_lr_multiplier_needs_a_model_that_names_its_step_parameters(tmp_path):
    with pytest.raises(ValueError, match="needs a model with step_parameters"):
        train(_model(), smooth_patches(8, 16), _config(tmp_path, max_steps=1, step_lr_multiplier=10.0))

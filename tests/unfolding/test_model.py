"""LoRunModel in block and shared mode: the PGD/HQS loop, shapes, loss, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel
from unfolding_helpers import TASKS, make_denoiser, make_model, smooth_images

from lorun_peft.integrity import add_backbone_checksums
from lorun_peft.physics import BlockCS
from lorun_peft.unfolding import LoRunConfig, LoRunModel, LoRunOutput


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ["pgd", "hqs", "gap"])
@pytest.mark.parametrize("mode", ["block", "shared"])
def test_every_task_algorithm_and_mode_builds_and_runs(task, algorithm, mode):
    model, images, measurement = make_model(task, algorithm, mode, num_stages=3)
    assert len(model.denoisers) == (3 if mode == "block" else 1)
    assert model.mode == mode
    out = model(measurement, return_stages=True)
    assert isinstance(out, LoRunOutput)
    assert out.images.shape == images.shape
    assert len(out.stages) == 3
    assert all(s.shape == images.shape for s in out.stages)
    torch.testing.assert_close(out.stages[-1], out.images)
    assert model(measurement).stages is None


def _manual_pgd(model, measurement):
    """Eq. 5-7 written out with the model's own parts."""
    physics, steps = model.task.physics, model.task.steps
    rho, lam = F.softplus(steps.raw_rho), F.softplus(steps.raw_lambda)
    x = physics.init(measurement)
    for k in range(model.num_stages):
        z = x - rho[k] * physics.A_adjoint(physics.A(x) - measurement)
        denoiser = model.denoisers[k if model.mode == "block" else 0]
        x = denoiser(z, sigma=torch.sqrt(rho[k] * lam[k]).expand(z.shape[0]))
    return x


@pytest.mark.parametrize("mode", ["block", "shared"])
def test_pgd_forward_is_eq5_then_eq7_with_noise_level_sqrt_rho_lambda(mode):
    model, _, measurement = make_model("cs", "pgd", mode, num_stages=3, noise_level_map=True)
    with torch.no_grad():  # distinct steps per stage, so a mixed-up index would show
        model.task.steps.raw_rho.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        model.task.steps.raw_lambda.copy_(torch.tensor([0.5, -0.5, 2.0]))
    torch.testing.assert_close(model(measurement).images, _manual_pgd(model, measurement))


def test_hqs_forward_is_the_eq9_closed_form_then_eq11():
    """Dense check: one 8x8 block, x_k = (Phi^T Phi + mu I)^-1 (Phi^T y + mu w), w_k = D(x_k)."""
    torch.manual_seed(1)
    physics = BlockCS(0.25, block_size=8)
    model = LoRunModel.from_components(
        physics, make_denoiser(1, noise_level_map=True), num_stages=3, algorithm="hqs"
    ).double()
    with torch.no_grad():
        model.task.steps.raw_mu.copy_(torch.tensor([-1.0, 0.0, 1.5]))
    images = smooth_images(2, 1, 8).double()
    y = model.task.physics.measure(images)
    phi = model.task.physics.Phi.detach()
    mu, lam = model.task.steps.step.detach(), model.task.steps.lam.detach()
    w = model.task.physics.init(y)
    for k in range(3):
        rhs = (phi.T @ y.reshape(2, -1, 1)) + mu[k] * w.reshape(2, -1, 1)
        x = torch.linalg.solve(phi.T @ phi + mu[k] * torch.eye(64, dtype=torch.float64), rhs).reshape(
            2, 1, 8, 8
        )
        w = model.denoisers[0](x, sigma=torch.sqrt(lam[k] / mu[k]).expand(2))
    torch.testing.assert_close(model(y).images, w)


@pytest.mark.parametrize("task", ["cassi", "sr2"])
def test_gap_forward_is_hqs_on_the_accumulated_measurement(task):
    """GAP's update written out: y_k = y_{k-1} + (y - A w_{k-1}), x_k = HQS step on y_k, w_k = D(x_k)."""
    model, images, measurement = make_model(task, "gap", "shared", num_stages=3, noise_level_map=True)
    model = model.double()
    y = measurement.double()
    with torch.no_grad():  # distinct steps per stage, so a mixed-up index would show
        model.task.steps.raw_mu.copy_(torch.tensor([-1.0, 0.0, 1.5]))
    physics, steps = model.task.physics, model.task.steps
    mu, lam = steps.step.detach(), steps.lam.detach()
    with torch.no_grad():
        w, accumulated = physics.init(y), y
        for k in range(3):
            accumulated = accumulated + (y - physics.A(w))
            x = physics.hqs_step(w, accumulated, mu[k])
            w = model.denoisers[0](x, sigma=torch.sqrt(lam[k] / mu[k]).expand(y.shape[0]))
        torch.testing.assert_close(model(y).images, w)
        hqs = LoRunModel.from_components(physics, model.denoisers[0], num_stages=3, algorithm="hqs").double()
        hqs.task.steps.load_state_dict(steps.state_dict())
        assert (hqs(y).images - w).abs().max() > 1e-3  # the accumulation changes the result


@pytest.mark.parametrize("algorithm", ["pgd", "hqs"])
def test_denoiser_receives_the_stage_noise_level_only_when_it_takes_one(algorithm):
    for noise_level_map in (True, False):
        model, _, measurement = make_model(
            "cs", algorithm, "shared", num_stages=3, noise_level_map=noise_level_map
        )
        seen: list = []
        hook = model.denoisers[0].register_forward_pre_hook(
            lambda _m, _a, kwargs, seen=seen: seen.append(kwargs.get("sigma")), with_kwargs=True
        )
        model(measurement)
        hook.remove()
        assert len(seen) == 3
        if not noise_level_map:
            assert all(s is None for s in seen)
            continue
        steps = model.task.steps
        expected = (
            torch.sqrt(steps.step * steps.lam) if algorithm == "pgd" else torch.sqrt(steps.lam / steps.step)
        )
        for k, sigma in enumerate(seen):
            assert sigma.shape == (2,)
            torch.testing.assert_close(sigma, expected[k].expand(2))
        assert expected[0].item() == pytest.approx(0.5 if algorithm == "pgd" else 1.0)


def test_loss_is_eq13_batch_mean_of_squared_l2_norms():
    model, images, measurement = make_model("cs")
    out = model(measurement, labels=images)
    expected = sum(((out.images[i] - images[i]) ** 2).sum() for i in range(2)) / 2
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="labels have shape"):
        model(measurement, labels=images[:1])


def test_padded_cs_grid_is_cropped_to_the_labels_or_image_size():
    model, _, _ = make_model("cs")
    images = smooth_images(2, 1, 12)  # not a multiple of the 8x8 block
    y = model.task.physics.measure(images)
    assert model(y).images.shape[-2:] == (16, 16)
    out = model(y, labels=images, return_stages=True)
    assert out.images.shape == images.shape and all(s.shape == images.shape for s in out.stages)
    assert model(y, image_size=(12, 12)).images.shape == images.shape
    for wrong in ((20, 20), (7, 12), (3, 3)):  # too large, or smaller by a whole block: not y's image
        with pytest.raises(ValueError, match=r"gives a measurement of shape .* got \(2, 16, 2, 2\)"):
            model(y, image_size=wrong)
    with pytest.raises(ValueError, match="positive integers"):
        model(y, image_size=(12,))


@pytest.mark.parametrize("algorithm", ["pgd", "hqs"])
def test_gradients_reach_steps_learned_phi_and_denoiser(algorithm):
    model, images, measurement = make_model("cs", algorithm, noise_level_map=True)
    model(measurement, labels=images).loss.backward()
    steps = model.task.steps
    for name, param in [
        ("raw step", getattr(steps, f"raw_{steps.step_name}")),
        ("raw lambda", steps.raw_lambda),
        ("Phi", model.task.physics.Phi),
        ("denoiser head", model.denoisers[0].head.weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_float64_model_runs_in_float64():
    model, images, measurement = make_model("sr2", "hqs")
    model = model.double()
    out = model(measurement.double(), labels=images.double())
    assert out.images.dtype == torch.float64 and torch.isfinite(out.loss)


def test_config_validates_its_fields():
    with pytest.raises(ValueError, match="not a stored mode"):
        LoRunConfig(mode="lorun")
    with pytest.raises(ValueError, match="mode must be"):
        LoRunConfig(mode="tiled")
    with pytest.raises(ValueError, match="algorithm"):
        LoRunConfig(algorithm="admm")
    with pytest.raises(ValueError, match="num_stages"):
        LoRunConfig(num_stages=0)
    with pytest.raises(ValueError, match="needs physics"):
        LoRunModel(LoRunConfig())


@pytest.mark.parametrize("mode", ["block", "shared"])
@pytest.mark.parametrize("task, algorithm", [("cs", "pgd"), ("cassi", "hqs"), ("sr4", "hqs")])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, task, algorithm, mode):
    model, _, measurement = make_model(task, algorithm, mode, noise_level_map=True)
    with torch.no_grad():
        model.task.steps.raw_lambda.add_(torch.tensor([0.1, 0.2, 0.3]))
        for p in model.task.physics.parameters():
            p.mul_(1.5)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["mode"] == mode
    loaded = LoRunModel.from_pretrained(tmp_path)
    assert not loaded.training, "transformers returns models in eval mode"
    assert loaded.mode == mode
    model.eval()
    reloaded = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded[key], value), key  # weights round-trip exactly
    # Two instances may get different oneDNN kernels, so their outputs agree only to rounding.
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(measurement).images, model(measurement).images, rtol=1e-5, atol=1e-5
        )
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, LoRunModel) and isinstance(AutoConfig.from_pretrained(tmp_path), LoRunConfig)


def test_cassi_mask_and_sr_kernel_travel_with_the_state_dict(tmp_path):
    model, _, _ = make_model("cassi")
    model.save_pretrained(tmp_path)
    loaded = LoRunModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.task.physics.mask, model.task.physics.mask, rtol=0, atol=0)
    assert loaded.task.physics.mask.sum() < loaded.task.physics.mask.numel(), "placeholder mask survived"


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_from_pretrained_raises_on_missing_or_unexpected_keys(tmp_path, change):
    model, _, _ = make_model("cs")
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    if change == "missing":
        del state["task.steps.raw_lambda"]
    else:
        state["task.steps.extra"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    add_backbone_checksums(tmp_path)  # a consistent record: the key check, not the sha256 check, refuses it
    with pytest.raises(ValueError, match=f"{change} keys"):
        LoRunModel.from_pretrained(tmp_path)


def test_block_from_shared_starts_as_the_shared_model_with_independent_copies():
    shared, _, measurement = make_model("cs", "pgd", "shared", num_stages=3, noise_level_map=True)
    block = LoRunModel.block_from_shared(shared)
    assert block.mode == "block" and len(block.denoisers) == 3
    with torch.no_grad():
        # Separate denoiser copies may get different oneDNN kernels: equal outputs up to rounding.
        torch.testing.assert_close(
            block(measurement).images, shared(measurement).images, rtol=1e-5, atol=1e-5
        )
        block.denoisers[1].head.weight.add_(1.0)
    assert not torch.equal(block.denoisers[0].head.weight, block.denoisers[1].head.weight)
    assert torch.equal(block.denoisers[0].head.weight, shared.denoisers[0].head.weight)
    with pytest.raises(ValueError, match="shared"):
        LoRunModel.block_from_shared(block)


def test_from_components_rejects_wrong_types():
    physics = BlockCS(0.25, block_size=8)
    with pytest.raises(TypeError, match="denoiser"):
        LoRunModel.from_components(physics, torch.nn.Conv2d(1, 1, 3), num_stages=2)
    with pytest.raises(TypeError, match="as_operator needs an object with callable A"):
        LoRunModel.from_components(torch.nn.Identity(), make_denoiser(1), num_stages=2)


@pytest.mark.parametrize("num_stages", [2.5, True, "3"])
def test_num_stages_must_be_an_int(num_stages):
    with pytest.raises((ValueError, TypeError), match="num_stages"):
        LoRunModel.from_components(BlockCS(0.25, block_size=8), make_denoiser(1), num_stages=num_stages)

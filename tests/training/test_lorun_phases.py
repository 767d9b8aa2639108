"""Both LoRun phases with the real model: shared U-Net on block CS, then stage LoRA; exact phase-2 resume."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lorun_peft.tuners", reason="lorun_peft.tuners is not available")
from lorun_peft.denoisers import UNetConfig, UNetDenoiser  # noqa: E402
from lorun_peft.physics import BlockCS  # noqa: E402
from lorun_peft.training import UnfoldingTrainingConfig, evaluate_psnr, list_checkpoints, train  # noqa: E402
from lorun_peft.tuners import StageLoRAConfig  # noqa: E402
from lorun_peft.unfolding import LoRunModel  # noqa: E402

torch.set_num_threads(1)


def _patches(count: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, size // 4, size // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _shared_model() -> LoRunModel:
    torch.manual_seed(0)
    physics = BlockCS(0.25, block_size=8, channels=1, learnable=True)
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, base_channels=4, depth=2))
    return LoRunModel.from_components(physics, denoiser, num_stages=3, mode="shared")


def _config(tmp_path, name: str, **overrides) -> UnfoldingTrainingConfig:
    values = {
        "output_dir": str(tmp_path / name),
        "max_steps": 40,
        "learning_rate": 3e-3,
        "batch_size": 4,
        "log_every": 1,
        "show_progress": False,
        "seed": 1,
    }
    values.update(overrides)
    return UnfoldingTrainingConfig(**values)


def test_phase1_shared_then_phase2_lorun(tmp_path):
    patches, held_out = _patches(64, 16, seed=0), _patches(4, 16, seed=1)
    model = _shared_model()
    start = evaluate_psnr(model, held_out)["psnr"]
    phase1 = train(model, patches, _config(tmp_path, "phase1"), eval_fn=lambda m: evaluate_psnr(m, held_out))
    assert sum(phase1.losses[-5:]) < 0.5 * sum(phase1.losses[:5])
    after_phase1 = phase1.eval_history[-1]["eval"]["psnr"]
    assert after_phase1 > start + 3.0

    model = phase1.model
    model.add_stage_adapters("cs25", StageLoRAConfig(num_stages=3, gamma=50))
    assert model.mode == "lorun"
    backbone = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and not any("lora_" in n for n in backbone)
    phase2 = train(model, patches, _config(tmp_path, "phase2", learning_rate=1e-3, max_steps=20))
    for name, param in phase2.model.named_parameters():
        if name in backbone:
            assert torch.equal(param, backbone[name]), name
    assert any(not torch.equal(p, trainable[n]) for n, p in phase2.model.named_parameters() if "lora_B" in n)
    # Adapters start at dW = 0, so phase 2 begins at phase-1 quality and must not lose it.
    assert evaluate_psnr(phase2.model, held_out)["psnr"] > after_phase1 - 0.5


def test_phase2_resume_is_bit_identical(tmp_path):
    patches = _patches(32, 16, seed=0)

    def phase2_model() -> LoRunModel:
        model = _shared_model()
        torch.manual_seed(1)
        model.add_stage_adapters("cs25", StageLoRAConfig(num_stages=3, gamma=50))
        return model

    config = _config(tmp_path, "full", max_steps=6, checkpoint_every=3, noise_sigma=0.01)
    full = train(phase2_model(), patches, config)
    checkpoint = list_checkpoints(tmp_path / "full")[0]
    assert checkpoint.name == "checkpoint-3"
    resumed_config = _config(
        tmp_path,
        "resumed",
        max_steps=6,
        checkpoint_every=3,
        noise_sigma=0.01,
        resume_from_checkpoint=str(checkpoint),
    )
    resumed = train(phase2_model(), patches, resumed_config)
    # Two model instances may be given different oneDNN kernels: the same weights up to float rounding.
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_step_lr_multiplier_moves_the_step_parameters_that_much_faster(tmp_path):
    from lorun_peft.training.run import parameter_groups

    model = _shared_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    step_params = {id(model.task.steps.raw_rho)}  # raw_lambda is frozen: this U-Net has no noise map
    groups = parameter_groups(model, trainable, _config(tmp_path, "g", step_lr_multiplier=10.0))
    assert [len(g["params"]) for g in groups] == [len(trainable) - 1, 1]
    assert {id(p) for p in groups[1]["params"]} == step_params and groups[1]["lr"] == pytest.approx(3e-2)
    assert parameter_groups(model, trainable, _config(tmp_path, "g")) == [{"params": trainable}]

    # Adam's first update moves every parameter by about lr * sign(gradient): 10x lr for the steps.
    patches = _patches(16, 16, seed=0)
    rho_before = model.task.steps.raw_rho.detach().clone()
    others_before = {n: p.detach().clone() for n, p in model.named_parameters() if "raw_" not in n}
    config = _config(tmp_path, "one_step", max_steps=1, learning_rate=1e-4, step_lr_multiplier=10.0)
    trained = train(model, patches, config).model
    rho_moved = (trained.task.steps.raw_rho.detach() - rho_before).abs()
    assert torch.allclose(rho_moved, torch.full_like(rho_moved, 1e-3), rtol=0.05)
    for name, param in trained.named_parameters():
        if name in others_before:
            assert (param.detach() - others_before[name]).abs().max() <= 1.05e-4, name

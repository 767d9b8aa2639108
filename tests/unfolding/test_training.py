"""Quick end-to-end training on CS: phase 1 (shared) then phase 2 (lorun) both lower the loss."""

from __future__ import annotations

import torch
from unfolding_helpers import train_adam as train

from lorun_peft.denoisers import UNetConfig, UNetDenoiser
from lorun_peft.physics import BlockCS
from lorun_peft.tuners import StageLoRAConfig
from lorun_peft.unfolding import LoRunModel

try:
    from lorun_peft.data.samples import sample_patches
except ImportError:  # the package's sample images are optional for this test
    sample_patches = None


def training_images() -> torch.Tensor:
    """Eight 32x32 gray patches: real photographs when available, smooth random images otherwise."""
    generator = torch.Generator().manual_seed(0)
    if sample_patches is not None:
        return sample_patches(8, 32, generator=generator)
    coarse = torch.rand(8, 1, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)


def test_phase1_shared_then_phase2_lorun_lower_the_loss_and_phase2_leaves_the_backbone_alone():
    torch.manual_seed(0)
    images = training_images()
    denoiser = UNetDenoiser(UNetConfig(base_channels=8, depth=2, noise_level_map=True))
    model = LoRunModel.from_components(BlockCS(0.25, block_size=16), denoiser, num_stages=3)

    # Phase 1: gradients reach the denoiser, the learned Phi and every rho_k / lambda_k.
    model(model.physics.measure(images), labels=images).loss.backward()
    steps = model.task.steps
    for name, param in [
        ("Phi", model.task.physics.Phi),
        ("rho", steps.raw_rho),
        ("lambda", steps.raw_lambda),
    ]:
        assert param.grad is not None and (param.grad != 0).all(), name
    model.zero_grad()
    start, phase1 = train(model, images, steps=40)
    assert phase1 < 0.2 * start, (start, phase1)
    assert steps.step.tolist() != [0.5] * 3, "rho moved away from its initial value"

    # Phase 2: only the adapters and the set's task parameters move.
    backbone = {k: v.clone() for k, v in model.backbone_state_dict().items()}
    model.add_stage_adapters("ratio-25", StageLoRAConfig(num_stages=3, gamma=25))
    before, phase2 = train(model, images, steps=40)
    # The loss computed again through the adapted layers may use other oneDNN kernels: equal to rounding.
    torch.testing.assert_close(
        before,
        phase1,
        rtol=1e-5,
        atol=0,
        msg=lambda m: f"adapters start at dW = 0 with a copy of the phase-1 task parameters: {m}",
    )
    assert phase2 < 0.7 * before, (before, phase2)
    after = model.backbone_state_dict()
    assert all(torch.equal(after[k], backbone[k]) for k in backbone)
    assert not torch.equal(model.physics.Phi, model.task.physics.Phi), "the set's own Phi was trained"
    with torch.no_grad(), model.disable_adapters():
        loss = model(model.task.physics.measure(images), labels=images).loss.item()
    torch.testing.assert_close(loss, phase1, rtol=1e-5, atol=0)  # computed again: equal to rounding

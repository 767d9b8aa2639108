"""Phase 1 (shared) then phase 2 (lorun) on every task and both algorithms, then a save/reload.

CS (learned Phi), CASSI (a synthetic cube, 8 bands, the standard 2-pixel shift) and SR with a kernel
of the 12 (K1, the 0.7-pixel isotropic Gaussian) at x2 and x4, each with PGD and HQS. Each phase must
lower the training loss by a clear margin, phase 2 must leave the backbone untouched, and the adapter
set saved to disk and reloaded onto the saved backbone must give identical outputs.
"""

from __future__ import annotations

import pytest
import torch
from unfolding_helpers import train_adam

from lorun_peft.denoisers import UNetConfig, UNetDenoiser
from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, synthetic_kernels_12
from lorun_peft.tuners import StageLoRAConfig
from lorun_peft.unfolding import LoRunModel


def _cube(bands: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth spatial structure times smooth spectra: a cube a small denoiser can learn."""
    coarse = torch.rand(4, 1, size // 4, size // 4, generator=generator)
    spatial = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    wavelengths = torch.linspace(0, 1, bands)
    centres = torch.rand(4, 1, generator=generator)
    spectra = torch.exp(-((wavelengths - centres) ** 2) / 0.1)  # (4, bands)
    return (spatial * spectra[:, :, None, None]).clamp(0, 1)


def _task(task: str):
    generator = torch.Generator().manual_seed(0)
    if task == "cassi":
        mask = torch.rand(32, 32, generator=generator)
        return CASSI(mask, step=2), _cube(8, 32, generator)
    coarse = torch.rand(4, 1, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    if task == "cs":
        return BlockCS(0.25, block_size=8), images
    kernel = synthetic_kernels_12()[0]  # K1 stand-in (25x25), always available offline
    return BlurDownsample(kernel, scale=int(task[2:])), images


@pytest.mark.parametrize("algorithm", ["pgd", "hqs"])
@pytest.mark.parametrize("task", ["cs", "cassi", "sr2", "sr4"])
def test_two_phases_lower_the_loss_and_the_set_reloads_exactly(task, algorithm, tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    physics, images = _task(task)
    channels = images.shape[1]
    denoiser = UNetDenoiser(UNetConfig(in_channels=channels, out_channels=channels, base_channels=8, depth=2))
    model = LoRunModel.from_components(physics, denoiser, num_stages=3, algorithm=algorithm, mode="shared")

    start, phase1 = train_adam(model, images, steps=30, lr=2e-3)
    assert phase1 < 0.4 * start, f"phase 1 did not learn: {start:.4g} -> {phase1:.4g}"
    model.save_pretrained(tmp_path / "backbone")
    backbone = {k: v.clone() for k, v in model.backbone_state_dict().items()}

    model.add_stage_adapters("set", StageLoRAConfig(num_stages=3, gamma=25))
    before, phase2 = train_adam(model, images, steps=40, lr=5e-3)
    assert before == pytest.approx(phase1, rel=1e-6), "phase 2 starts exactly at the phase-1 model"
    assert phase2 < 0.85 * before, f"phase 2 did not learn: {before:.4g} -> {phase2:.4g}"
    assert all(torch.equal(model.backbone_state_dict()[k], v) for k, v in backbone.items())

    model.save_adapter_set(tmp_path / "sets")
    reloaded = LoRunModel.from_pretrained(tmp_path / "backbone")
    reloaded.load_adapter(tmp_path / "sets", "set")
    model.eval()
    with torch.no_grad():
        y = model.physics.measure(images)
        torch.testing.assert_close(reloaded(y).images, model(y).images, rtol=1e-5, atol=1e-6)

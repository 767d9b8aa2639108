"""PixelInpainting through the operator protocol: its algebra, its masks and its classical baseline."""

from __future__ import annotations

import pytest
import torch

from lorun_peft import LoRunModel
from lorun_peft.metrics import cs_psnr
from lorun_peft.physics import (
    INPAINTING_FACTORY,
    PixelInpainting,
    WrappedOperator,
    adjointness_test,
    conjugate_gradient,
    physics_from_config,
    pixel_inpainting,
)
from lorun_peft.tasks import InpaintingArguments, RandomPixelMasks, get_task, inpainting_set_name
from lorun_peft.tasks.inpainting import harmonic_inpainting

torch.set_num_threads(1)


def _operator(missing: float = 0.7, size: int = 16, seed: int = 0, dtype=torch.float64):
    physics = pixel_inpainting(missing).to(dtype)
    mask = physics.operator.draw_mask(size, size, torch.Generator().manual_seed(seed))
    physics.operator.set_mask(mask)
    return physics


def test_is_a_wrapped_operator_with_a_factory_config_and_no_saved_mask():
    physics = _operator(0.7)
    assert isinstance(physics, WrappedOperator) and isinstance(physics.operator, PixelInpainting)
    config = physics.get_config()
    assert config["factory"] == INPAINTING_FACTORY and config["args"] == {"missing": 0.7}
    assert "operator.mask" not in physics.state_dict()  # the mask belongs to the measurement
    rebuilt = physics_from_config(config)
    assert rebuilt.operator.missing == 0.7 and rebuilt.operator.mask.numel() == 0


def test_adjoint_closed_form_prox_and_the_missing_rate():
    physics = _operator(0.7, size=64)
    assert adjointness_test(physics, (2, 1, 64, 64), torch.Generator().manual_seed(1)) < 1e-12
    mask = physics.operator.mask
    assert abs(float(1 - mask.mean()) - 0.7) < 0.03  # 4096 pixels: the drawn rate is the asked one
    generator = torch.Generator().manual_seed(2)
    z, y = (torch.rand(2, 1, 64, 64, generator=generator, dtype=torch.float64) for _ in range(2))
    mu = torch.tensor([0.3, 2.0], dtype=torch.float64)
    step = physics.hqs_step(z, y, mu)  # the operator's prox_l2 with gamma = 1 / mu
    rhs = physics.A_adjoint(y) + mu.view(-1, 1, 1, 1) * z
    reference = conjugate_gradient(
        lambda v: physics.A_adjoint(physics.A(v)) + mu.view(-1, 1, 1, 1) * v, rhs, z, tol=1e-14, max_iter=50
    )
    torch.testing.assert_close(step, reference, rtol=0, atol=1e-12)


def test_init_fills_the_holes_close_to_harmonic_inpainting():
    from lorun_peft.data.samples import load_sample_image

    clean = load_sample_image("camera", mode="L")[None, :, :128, :128].double()
    physics = _operator(0.7, size=128, seed=3)
    y = physics.measure(clean)
    fill, harmonic = physics.init(y), harmonic_inpainting(y, physics.operator.mask)
    seen = physics.operator.mask.bool().expand_as(clean)
    torch.testing.assert_close(fill[seen], clean[seen])  # seen pixels are kept
    torch.testing.assert_close(harmonic[seen], clean[seen])
    zero = float(cs_psnr(physics.A_adjoint(y).clamp(0, 1), clean))
    psnr_fill, psnr_harmonic = (
        float(cs_psnr(fill.clamp(0, 1), clean)),
        float(cs_psnr(harmonic.clamp(0, 1), clean)),
    )
    assert psnr_harmonic > psnr_fill - 1.0 and psnr_fill > zero + 15, (zero, psnr_fill, psnr_harmonic)


def test_mask_errors_are_clear():
    physics = pixel_inpainting(0.5)
    with pytest.raises(ValueError, match="no mask yet.*set_mask"):
        physics.A(torch.rand(1, 1, 8, 8))
    physics.operator.set_mask(torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"inpainting mask is \(1, 1, 8, 8\)"):
        physics.A(torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        physics.operator.set_mask(torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="missing must be a fraction"):
        pixel_inpainting(1.0)
    with pytest.raises(ValueError, match="--missing must be a fraction"):
        InpaintingArguments(missing=-0.1)


def test_a_sampler_draws_a_new_mask_per_batch_and_sets_are_named_by_the_rate():
    physics = _operator(0.5, size=32)
    sampler = RandomPixelMasks(32)
    generator = torch.Generator().manual_seed(0)
    sampler(physics, generator)
    first = physics.operator.mask.clone()
    sampler(physics, generator)
    assert first.shape == (1, 1, 32, 32) and not torch.equal(first, physics.operator.mask)
    assert (
        inpainting_set_name(0.9) == "missing-90" == get_task("inpainting").set_name(InpaintingArguments(0.9))
    )


def test_a_model_saves_and_loads_with_the_registered_factory(tmp_path):
    from lorun_peft.denoisers import build_denoiser

    torch.manual_seed(0)
    model = LoRunModel.from_components(
        pixel_inpainting(0.7), build_denoiser("unet", 1, 4, 2), num_stages=2, algorithm="hqs"
    )
    model.save_pretrained(tmp_path)
    loaded = LoRunModel.from_pretrained(tmp_path)
    assert loaded.physics.get_config() == model.physics.get_config()
    mask = loaded.physics.operator.draw_mask(16, 16, torch.Generator().manual_seed(0))
    for m in (model, loaded):
        m.eval().physics.operator.set_mask(mask)
    y = model.physics.measure(torch.rand(1, 1, 16, 16))
    torch.testing.assert_close(loaded.restore(y), model.restore(y), rtol=1e-5, atol=1e-6)


def test_pushes_both_parts_with_the_task_tag_and_loads_back_from_the_pushed_files(tmp_path, monkeypatch):
    """The protocol operator goes to the Hub like the built-in ones: backbone and set, tagged inpainting."""
    from fake_hub import FakeHub  # tests/ is on the path (tests/conftest.py)
    from huggingface_hub import constants

    from lorun_peft import StageLoRAConfig
    from lorun_peft.denoisers import build_denoiser

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    fake = FakeHub(tmp_path / "downloads")
    fake.install(monkeypatch)
    torch.manual_seed(0)
    model = LoRunModel.from_components(
        pixel_inpainting(0.7), build_denoiser("unet", 1, 4, 2), num_stages=2, algorithm="hqs"
    )
    model.add_stage_adapters(
        "missing-90", StageLoRAConfig(num_stages=2, gamma=50), physics=pixel_inpainting(0.9)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.push_to_hub("me/inpainting-backbone")
    model.push_adapter_set("me/inpainting-adapters", "missing-90", base_model="me/inpainting-backbone")
    for repo in ("me/inpainting-backbone", "me/inpainting-adapters"):
        meta, _ = fake.card(repo)
        assert "image-inpainting" in meta["tags"], (repo, meta["tags"])
    loaded = LoRunModel.from_pretrained(fake.checkout("me/inpainting-backbone", tmp_path / "b"))
    loaded.load_adapter(fake.checkout("me/inpainting-adapters", tmp_path / "a"), "missing-90")
    assert loaded.physics.get_config() == model.adapter_tasks["missing-90"].physics.get_config()
    mask = loaded.physics.operator.draw_mask(16, 16, torch.Generator().manual_seed(0))
    model.set_adapter_set("missing-90")
    for m in (model, loaded):
        m.eval().physics.operator.set_mask(mask)
    y = model.physics.measure(torch.rand(1, 1, 16, 16))
    torch.testing.assert_close(loaded.restore(y), model.restore(y), rtol=1e-5, atol=1e-6)

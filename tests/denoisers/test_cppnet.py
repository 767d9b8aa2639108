"""CPP-Net-style CS denoiser: Auto-class round trip, any channel count and size, the multi-scale attention's
profile alignment, LoRA coverage, and the three unfolding modes with a K = 9 LoRun backward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

import lorun_peft.denoisers  # noqa: F401  (registers the Auto classes)
from lorun_peft.denoisers.cppnet import CPPNetConfig, CPPNetDenoiser, _profiles_to_full_resolution
from lorun_peft.physics import BlockCS

TINY = {"base_channels": 4, "num_levels": 3, "reduction": 2}


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registered_with_auto_classes() -> None:
    config = AutoConfig.for_model("lorun-cppnet", **TINY)
    assert isinstance(config, CPPNetConfig)
    assert isinstance(AutoModel.from_config(config), CPPNetDenoiser)


def test_save_load_round_trip_is_exact(tmp_path) -> None:
    torch.manual_seed(0)
    model = CPPNetDenoiser(CPPNetConfig(base_channels=8)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CPPNetDenoiser) and loaded.config.to_diff_dict() == model.config.to_diff_dict()
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[key], reloaded[key]) for key in saved), "weights must round-trip exactly"
    # Two instances may get different oneDNN kernels, so their outputs agree only to rounding.
    x = torch.rand(2, 1, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels, size", [(1, (37, 53)), (3, (5, 9)), (1, (64, 40))])
def test_any_channel_count_and_size(channels: int, size: tuple[int, int]) -> None:
    model = CPPNetDenoiser(CPPNetConfig(in_channels=channels, out_channels=channels, **TINY)).eval()
    x = torch.rand(1, channels, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_default_levels_and_width() -> None:
    """CPP-Net's setting: width 32, four levels 32/64/128/256, one MSTB per level below the first."""
    model = CPPNetDenoiser(CPPNetConfig())
    assert model.size_multiple == 8 and len(model.transformers) == 3
    assert [e[1].out_channels for e in model.encoders] == [64, 128, 256]


def test_float64_and_noise_level_map() -> None:
    model = CPPNetDenoiser(CPPNetConfig(noise_level_map=True, **TINY)).double()
    x = torch.rand(2, 1, 11, 13, dtype=torch.float64)
    y = model(x, sigma=0.1)
    assert y.dtype == torch.float64 and y.shape == x.shape


def test_profiles_of_a_coarse_level_land_on_their_pixels() -> None:
    """Channel-to-space inverts folding the s sub-pixels of a full-resolution profile into channels."""
    full = torch.randn(2, 3, 24)
    s = 4
    coarse = full.view(2, 3, 24 // s, s).transpose(-2, -1).reshape(2, 3 * s, 24 // s)
    torch.testing.assert_close(_profiles_to_full_resolution(coarse, 3), full)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="num_levels"):
        CPPNetConfig(num_levels=1)
    with pytest.raises(ValueError, match="reduction"):
        CPPNetConfig(reduction=0)


def test_every_weight_outside_norms_and_depthwise_convs_is_lora_reachable() -> None:
    model = CPPNetDenoiser(CPPNetConfig(**TINY))
    depthwise, other = set(), []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups > 1:
            depthwise.add(name.rsplit(".", 1)[-1])
        elif not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.LayerNorm)):
            other.extend(f"{name}.{n}" for n, _ in module.named_parameters(recurse=False))
    assert depthwise == {"depthwise", "value_depthwise"}
    assert other == ["threshold.mu"]  # the soft-threshold scale, one value per channel


@pytest.mark.parametrize("mode", ["block", "shared", "lorun"])
def test_three_unfolding_modes_k9(mode: str) -> None:
    try:
        from lorun_peft.tuners import StageLoRAConfig
        from lorun_peft.unfolding import LoRunModel
    except ImportError as err:
        pytest.skip(f"lorun_peft.tuners / lorun_peft.unfolding are not available: {err}")
    torch.manual_seed(0)
    physics = BlockCS(0.25, block_size=8)
    denoiser = CPPNetDenoiser(CPPNetConfig(**TINY))
    model = LoRunModel.from_components(
        physics, denoiser, num_stages=9, mode="block" if mode == "block" else "shared"
    )
    names = []
    if mode == "lorun":
        config = StageLoRAConfig(num_stages=9, gamma=10, init_lora_weights=False)
        names = model.add_stage_adapters("ratio-25", config)
    truth = torch.rand(2, 1, 16, 16)
    out = model(physics.A(truth), labels=truth)
    assert out.images.shape == truth.shape and len(model.denoisers) == (9 if mode == "block" else 1)
    out.loss.backward()
    params = dict(model.denoisers.named_parameters())
    if mode != "lorun":
        assert all(p.grad is not None for p in params.values())
        return
    for adapter in names:
        grads = [p.grad for n, p in params.items() if f".{adapter}." in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), adapter
    base = [n for n in params if "lora_" not in n]
    assert base and all(params[n].grad is None for n in base)

"""SSR-style CASSI denoiser: Auto-class round trip, any band count and size, windowed spectral attention,
LoRA coverage, and a K = 9 LoRun backward pass that trains every stage adapter and no base weight."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

import lorun_peft.denoisers  # noqa: F401  (registers the Auto classes)
from lorun_peft.denoisers.base import count_parameters
from lorun_peft.denoisers.ssr import SSRConfig, SSRDenoiser, WindowSpectralAttention
from lorun_peft.physics import CASSI

TINY = {"base_channels": 8, "window_size": 4, "cmb_kernel_size": 5}


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registered_with_auto_classes() -> None:
    config = AutoConfig.for_model("lorun-ssr", **TINY)
    assert isinstance(config, SSRConfig)
    assert isinstance(AutoModel.from_config(config), SSRDenoiser)


def test_save_load_round_trip_is_exact(tmp_path) -> None:
    torch.manual_seed(0)
    model = SSRDenoiser(SSRConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SSRDenoiser) and loaded.config.to_diff_dict() == model.config.to_diff_dict()
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[key], reloaded[key]) for key in saved), "weights must round-trip exactly"
    # Two instances may get different oneDNN kernels, so their outputs agree only to rounding.
    x = torch.rand(2, 28, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bands, size", [(28, (37, 53)), (3, (5, 9)), (31, (16, 16))])
def test_any_band_count_and_size(bands: int, size: tuple[int, int]) -> None:
    model = SSRDenoiser(SSRConfig(in_channels=bands, out_channels=bands, **TINY)).eval()
    x = torch.rand(1, bands, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_default_is_the_28_band_paper_size() -> None:
    """Table III: Block-9 = 5.18M, i.e. about 0.575M per stage denoiser (within 5 %)."""
    model = SSRDenoiser(SSRConfig())
    assert model.config.in_channels == model.config.out_channels == 28
    assert count_parameters(model) == pytest.approx(5.18e6 / 9, rel=0.05)


def test_float64_and_noise_level_map() -> None:
    model = SSRDenoiser(SSRConfig(in_channels=4, out_channels=4, noise_level_map=True, **TINY)).double()
    x = torch.rand(2, 4, 11, 13, dtype=torch.float64)
    y = model(x, sigma=torch.tensor([0.1, 0.2], dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == x.shape


def _reference_window_attention(attn: WindowSpectralAttention, x: Tensor) -> Tensor:
    """Spectral attention computed window by window on explicit (possibly smaller) border windows."""
    q, k, v = attn.to_qkv(x).chunk(3, dim=1)
    out = torch.empty_like(v)
    s = attn.window_size
    for i in range(0, x.shape[-2], s):
        for j in range(0, x.shape[-1], s):
            qw, kw, vw = (t[..., i : i + s, j : j + s].flatten(2) for t in (q, k, v))
            weights = torch.softmax(qw @ kw.transpose(1, 2) * attn.scale, dim=-1)
            out[..., i : i + s, j : j + s] = (weights @ vw).view_as(v[..., i : i + s, j : j + s])
    return attn.to_out(out)


def test_window_attention_matches_window_by_window_reference() -> None:
    torch.manual_seed(1)
    attn = WindowSpectralAttention(6, window_size=4).double()
    x = torch.randn(2, 6, 10, 7, dtype=torch.float64)  # neither side a multiple of the window
    torch.testing.assert_close(attn(x), _reference_window_attention(attn, x))


def test_window_attention_is_local() -> None:
    attn = WindowSpectralAttention(4, window_size=4)
    x = torch.randn(1, 4, 8, 8)
    changed = x.clone()
    changed[..., 4:, 4:] += 1.0  # only the bottom-right window
    diff = (attn(changed) - attn(x)).abs().sum(dim=1)[0]
    assert diff[4:, 4:].max() > 0.01
    # Two forward runs agree elsewhere only to rounding; a window leak would be of the order of the change.
    torch.testing.assert_close(diff[:4, :], torch.zeros(4, 8), rtol=0, atol=1e-6)
    torch.testing.assert_close(diff[:, :4], torch.zeros(8, 4), rtol=0, atol=1e-6)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="cmb_kernel_size"):
        SSRConfig(cmb_kernel_size=4)
    with pytest.raises(ValueError, match="window_size"):
        SSRConfig(window_size=0)
    with pytest.raises(ValueError, match="residual"):
        SSRConfig(in_channels=28, out_channels=3)


def test_every_weight_outside_norms_and_depthwise_convs_is_lora_reachable() -> None:
    """All parameters live in groups=1 Conv2d/ConvTranspose2d (LoRA targets), norms, or depthwise convs."""
    model = SSRDenoiser(SSRConfig(**TINY))
    depthwise = set()
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups > 1:
            depthwise.add(name.rsplit(".", 1)[-1])
        else:
            assert isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.LayerNorm, nn.GroupNorm)), name
    assert depthwise == {"position", "depthwise", "modulation", "spectral_weight"}


def test_lorun_k9_backward_reaches_every_stage_adapter_and_no_base_weight() -> None:
    try:
        from lorun_peft.tuners import StageLoRAConfig, add_stage_adapters, stage
    except ImportError as err:
        pytest.skip(f"lorun_peft.tuners is not available: {err}")
    torch.manual_seed(0)
    model = SSRDenoiser(SSRConfig(**TINY))
    names = add_stage_adapters(
        model, "cassi", StageLoRAConfig(num_stages=9, gamma=10, init_lora_weights=False)
    )
    physics = CASSI(torch.rand(12, 12), step=2)
    truth = torch.rand(1, 28, 12, 12)
    y = physics.A(truth)
    x = physics.init(y)
    for k in range(9):
        with stage(model, k):
            x = model(physics.gradient_step(x, y, 0.5))
    (x - truth).pow(2).mean().backward()
    for adapter in names:
        grads = [p.grad for n, p in model.named_parameters() if f".{adapter}." in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), adapter
    base = [n for n, p in model.named_parameters() if "lora_" not in n]
    assert base and all(dict(model.named_parameters())[n].grad is None for n in base)


@pytest.mark.parametrize("mode", ["block", "shared"])
def test_block_and_shared_unfolding_k9_train_every_denoiser(mode: str) -> None:
    try:
        from lorun_peft.unfolding import LoRunModel
    except ImportError as err:
        pytest.skip(f"lorun_peft.unfolding is not available: {err}")
    torch.manual_seed(0)
    physics = CASSI(torch.rand(12, 12), step=2)
    model = LoRunModel.from_components(physics, SSRDenoiser(SSRConfig(**TINY)), num_stages=9, mode=mode)
    truth = torch.rand(1, 28, 12, 12)
    out = model(physics.A(truth), labels=truth)
    assert out.images.shape == truth.shape and len(model.denoisers) == (9 if mode == "block" else 1)
    out.loss.backward()
    assert all(p.grad is not None for p in model.denoisers.parameters())

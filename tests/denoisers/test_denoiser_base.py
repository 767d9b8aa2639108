"""The contract every denoiser family shares: save/load, strict loading, any size, sigma, residual, init."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from lorun_peft.denoisers import (
    DenoiserPreTrainedModel,
    ResUNetConfig,
    ResUNetDenoiser,
    TransformerConfig,
    TransformerDenoiser,
    UNetConfig,
    UNetDenoiser,
    count_parameters,
    denoiser_from_config,
)

FAMILIES = {
    "unet": (UNetConfig, UNetDenoiser),
    "transformer": (TransformerConfig, TransformerDenoiser),
    "resunet": (ResUNetConfig, ResUNetDenoiser),
}


def build(family: str, seed: int = 0, **kwargs) -> DenoiserPreTrainedModel:
    torch.manual_seed(seed)
    config_cls, model_cls = FAMILIES[family]
    return model_cls(config_cls(**kwargs)).eval()


def image(model: DenoiserPreTrainedModel, h: int = 37, w: int = 45, batch: int = 2, dtype=torch.float32):
    return torch.rand(batch, model.config.in_channels, h, w, generator=torch.Generator().manual_seed(1)).to(
        dtype
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("noise_level_map", [False, True])
def test_save_load_roundtrip_is_exact(family: str, noise_level_map: bool, tmp_path: Path) -> None:
    model = build(family, noise_level_map=noise_level_map)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob(".tmp-save-*"))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.model_type == model.config.model_type
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[key], reloaded[key]) for key in saved), "weights must round-trip exactly"
    x = image(model)
    sigma = 0.1 if noise_level_map else None
    # Two instances may get different oneDNN kernels, so their outputs agree only to rounding.
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), model(x, sigma), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_twice_overwrites_atomically(family: str, tmp_path: Path) -> None:
    build(family, seed=0).save_pretrained(tmp_path)
    second = build(family, seed=1)
    second.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    for (name, p), q in zip(second.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="is a file"):
        second.save_pretrained(tmp_path / "config.json")


def _rewrite_checkpoint(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_or_unexpected_keys_raise(family: str, tmp_path: Path) -> None:
    build(family).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = sorted(state)[-1]
    _rewrite_checkpoint(tmp_path, lambda s: s.pop(key))
    with pytest.raises(ValueError, match=rf"missing keys: \['{key}'\]"):
        AutoModel.from_pretrained(tmp_path)
    _rewrite_checkpoint(tmp_path, lambda s: s.update({key: state[key], "extra.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"unexpected keys: \['extra.weight'\]"):
        AutoModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_mismatched_shapes_raise(family: str, tmp_path: Path) -> None:
    build(family).save_pretrained(tmp_path)
    key = sorted(load_file(tmp_path / "model.safetensors"))[0]
    _rewrite_checkpoint(tmp_path, lambda s: s.update({key: torch.zeros(2, 2)}))
    for ignore in (False, True):
        with pytest.raises(ValueError, match=f"mismatched keys.*{key}"):
            AutoModel.from_pretrained(tmp_path, ignore_mismatched_sizes=ignore)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("channels", [1, 3, 28])
def test_odd_sizes_keep_shape(family: str, channels: int) -> None:
    model = build(family, in_channels=channels, out_channels=channels)
    with torch.no_grad():
        for h, w in [(97, 131), (5, 3)]:
            out = model(image(model, h, w, batch=1))
            assert out.shape == (1, channels, h, w)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_channel_changing_and_float64(family: str) -> None:
    model = build(family, in_channels=3, out_channels=1, residual=False).double()
    out = model(image(model, 20, 27, dtype=torch.float64))
    assert out.shape == (2, 1, 20, 27) and out.dtype == torch.float64


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_leak_between_images(family: str) -> None:
    model = build(family)
    x = image(model, 33, 41)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:])
    torch.testing.assert_close(batched[1:], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_model_keeps_torch_default_init(family: str) -> None:
    """Conv/linear weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's kaiming_uniform_(a=sqrt(5)))."""
    torch.manual_seed(0)
    model = AutoModel.from_config(FAMILIES[family][0]())
    scaled = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            bound = 1 / math.sqrt(module.weight.shape[1] * module.weight[0][0].numel())
            scaled.append(module.weight.detach().flatten() / bound)
            if module.bias is not None:
                assert module.bias.abs().max().item() <= bound * (1 + 1e-6), name
        elif isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    scaled = torch.cat(scaled)
    assert scaled.numel() > 5000
    assert scaled.abs().max().item() <= 1 + 1e-6
    assert scaled.std().item() == pytest.approx(1 / math.sqrt(3), rel=0.03)  # std of U(-1, 1)
    temperatures = [p for n, p in model.named_parameters() if n.endswith("temperature")]
    assert all(torch.equal(t, torch.ones_like(t)) for t in temperatures)


def test_fresh_init_is_not_transformers_normal() -> None:
    """transformers' _init_weights would give std 0.02; torch's default gives this conv ~0.034."""
    conv = build("unet").encoders[0][2]
    assert conv.weight.std().item() > 0.03
    assert conv.weight.abs().max().item() <= 1 / math.sqrt(conv.weight[0].numel()) * (1 + 1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_sigma_map_conditions_output(family: str) -> None:
    model = build(family, noise_level_map=True)
    x = image(model)
    with torch.no_grad():
        low, high = model(x, 0.05), model(x, 0.2)
        assert (low - high).abs().max().item() > 1e-4
        torch.testing.assert_close(model(x, torch.tensor(0.05)), low)
        per_sample = model(x, torch.tensor([0.05, 0.2]))
        torch.testing.assert_close(per_sample[:1], low[:1])
        torch.testing.assert_close(per_sample[1:], high[1:])
    with pytest.raises(ValueError, match="pass sigma"):
        model(x)
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        model(x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        model(x, torch.full((2, 1), 0.1))
    with pytest.raises(ValueError, match="noise_level_map=False"):
        build(family)(x, 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_input_shape_raises(family: str) -> None:
    model = build(family)
    with pytest.raises(ValueError, match="expects pixel_values of shape"):
        model(torch.rand(1, model.config.in_channels + 1, 16, 16))
    with pytest.raises(ValueError, match="expects pixel_values of shape"):
        model(torch.rand(model.config.in_channels, 16, 16))


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_adds_the_input(family: str) -> None:
    residual = build(family, residual=True)
    plain = build(family, residual=False)
    plain.load_state_dict(residual.state_dict())
    x = image(residual)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), x + plain(x))
    config_cls, _ = FAMILIES[family]
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        config_cls(in_channels=3, out_channels=1, residual=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_denoiser_from_config_rebuilds_family(family: str) -> None:
    model = build(family, in_channels=28, out_channels=28, noise_level_map=True)
    rebuilt = denoiser_from_config(model.config.to_dict())
    assert type(rebuilt) is type(model)
    for key in ("in_channels", "out_channels", "residual", "noise_level_map"):
        assert getattr(rebuilt.config, key) == getattr(model.config, key)
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [
        (n, p.shape) for n, p in model.named_parameters()
    ]
    assert isinstance(AutoConfig.for_model(model.config.model_type), FAMILIES[family][0])


def test_denoiser_from_config_rejects_bad_dicts() -> None:
    with pytest.raises(ValueError, match="no 'model_type'"):
        denoiser_from_config({"in_channels": 1})
    with pytest.raises(ValueError, match="unknown denoiser model_type"):
        denoiser_from_config({"model_type": "lorun-nonexistent"})


def test_count_parameters() -> None:
    model = build("transformer")
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.embed.requires_grad_(False)
    frozen = sum(p.numel() for p in model.embed.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen


@pytest.mark.parametrize("family", FAMILIES)
def test_learnable_layers_are_lora_reachable(family: str) -> None:
    """Every weight lives in a groups=1 Conv2d/ConvTranspose2d/Linear, a norm, or is a scalar per head."""
    model = build(family)
    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            assert module.groups == 1 or name.endswith("dwconv"), name
        else:
            assert isinstance(module, (nn.Linear, nn.LayerNorm)) or own == ["temperature"], name


@pytest.mark.parametrize(
    "config_cls, kwargs",
    [
        (UNetConfig, {"downsample": "avgpool"}),
        (UNetConfig, {"upsample": "nearest"}),
        (UNetConfig, {"depth": 0}),
        (TransformerConfig, {"hidden_channels": 15, "num_heads": 2}),
        (ResUNetConfig, {"channels": []}),
        (ResUNetConfig, {"in_channels": 0, "out_channels": 0}),
    ],
)
def test_bad_configs_raise(config_cls, kwargs) -> None:
    with pytest.raises(ValueError):
        config_cls(**kwargs)

"""Per-family checks: paper-matched default sizes, architecture options, and that each default learns."""

from __future__ import annotations

import pytest
import torch

from lorun_peft.data.samples import sample_patches
from lorun_peft.denoisers import (
    ResUNetConfig,
    ResUNetDenoiser,
    TransformerConfig,
    TransformerDenoiser,
    UNetConfig,
    UNetDenoiser,
    count_parameters,
)

# The paper's per-block sizes: Table II (Block-9 U-Net 4.65M, Transformer 0.10M, gray CS) and Table VIII
# (SR Block-1 ResUNet 0.59M).
PAPER_SIZES = [
    (UNetDenoiser, UNetConfig(), 4.65e6 / 9),
    (TransformerDenoiser, TransformerConfig(), 0.10e6 / 9),
    (ResUNetDenoiser, ResUNetConfig(), 0.59e6),
]


@pytest.mark.parametrize("model_cls, config, paper", PAPER_SIZES)
def test_default_sizes_match_the_paper(model_cls, config, paper: float) -> None:
    assert count_parameters(model_cls(config)) == pytest.approx(paper, rel=0.03)


@pytest.mark.parametrize("downsample", ["maxpool", "strided"])
@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_unet_options(downsample: str, upsample: str) -> None:
    config = UNetConfig(base_channels=8, depth=4, downsample=downsample, upsample=upsample)
    model = UNetDenoiser(config).eval()
    assert model.size_multiple == 8
    assert [m[0].out_channels for m in model.encoders] == [8, 16, 32, 64]
    layers = [type(m).__name__ for m in model.modules()]
    assert ("MaxPool2d" in layers) == (downsample == "maxpool")
    assert ("ConvTranspose2d" in layers) == (upsample == "transpose")
    with torch.no_grad():
        assert model(torch.rand(1, 1, 19, 30)).shape == (1, 1, 19, 30)


def test_issue5_reference_unet() -> None:
    """The "3-level U-Net of width 16": three resolution levels 16/32/64, two downsamplings."""
    model = UNetDenoiser(UNetConfig(base_channels=16, depth=3))
    assert [m[0].out_channels for m in model.encoders] == [16, 32, 64]
    assert len(model.downsamplers) == 2 and model.size_multiple == 4


def test_resunet_levels_follow_channels() -> None:
    model = ResUNetDenoiser(ResUNetConfig(channels=[8, 16, 24], num_res_blocks=1, noise_level_map=True))
    assert model.head.in_channels == 4 and model.size_multiple == 4
    assert [d[-1].out_channels for d in model.downs] == [16, 24]
    with torch.no_grad():
        assert model(torch.rand(2, 3, 13, 22), sigma=torch.tensor([0.1, 0.2])).shape == (2, 3, 13, 22)


def test_transformer_attention_is_global_over_channels() -> None:
    """Channel attention mixes every pixel through C/h x C/h maps: it commutes with any pixel shuffle
    (no windows, no positions), and its q/k/v/o projections are the LoRA-targetable 1x1 convs."""
    attn = TransformerDenoiser(TransformerConfig(hidden_channels=8, num_heads=2)).blocks[0].attn
    assert {n for n, _ in attn.named_children()} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    x = torch.randn(2, 8, 12, 10)
    perm = torch.randperm(12 * 10)
    shuffle = lambda t: t.flatten(2)[..., perm].reshape(t.shape)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(attn(shuffle(x)), shuffle(attn(x)), rtol=1e-5, atol=1e-5)
        local = x.clone()
        local[..., 0, 0] += 1.0
        assert (attn(local) - attn(x))[..., 6:, 5:].abs().max() > 1e-4  # a far pixel feels the change


SIGMA = 25 / 255
LEARNING = [
    (UNetDenoiser, UNetConfig(), 1e-3),
    (TransformerDenoiser, TransformerConfig(), 2e-3),
    (ResUNetDenoiser, ResUNetConfig(), 2e-3),
]


@pytest.mark.parametrize("model_cls, config, lr", LEARNING, ids=["unet", "transformer", "resunet"])
def test_default_model_learns_gaussian_denoising(model_cls, config, lr: float) -> None:
    """250 Adam steps on 8 real 32x32 patches per step (sigma 25/255): the MSE ends well below the noise.

    The identity (residual=True with a zero net) scores MSE = sigma^2; we ask for less than half of that
    (> 3 dB better than the noisy input) over the last 20 steps, and half the loss of the first 20.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = model_cls(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(250):
        clean = sample_patches(8, 32, config.in_channels, generator)
        noisy = clean + SIGMA * torch.randn(clean.shape, generator=generator)
        loss = torch.mean((model(noisy) - clean) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() / SIGMA**2)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5, f"MSE/sigma^2 over the last 20 steps: {last:.3f}"
    assert last < 0.5 * first, f"loss fell only from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("family", ["unet", "ssr", "cppnet"])
@pytest.mark.parametrize("depth", [9, 32])
def test_an_absurd_level_count_is_refused_before_anything_is_built(family: str, depth: int) -> None:
    """``build_denoiser("unet", 28, 28, 32)`` (width and depth swapped by mistake) used to hang allocating."""
    from lorun_peft.denoisers import build_denoiser

    with pytest.raises(ValueError, match=r"between [12] and 8 resolution levels, got " + str(depth)):
        build_denoiser(family, 28, 16, depth)


@pytest.mark.parametrize("family", ["unet", "ssr", "transformer", "resunet", "cppnet"])
def test_identity_init_starts_as_the_identity_and_keeps_loaded_weights(family: str, tmp_path) -> None:
    from transformers import AutoModel

    from lorun_peft.denoisers import build_denoiser

    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24)
    fresh = build_denoiser(family, 3, identity_init=True).eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), x)
        assert not torch.equal(build_denoiser(family, 3).eval()(x), x)  # the default init is not
        fresh.output_layer.weight.normal_()  # "trained": from_pretrained must not zero it again
    fresh.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.identity_init
    assert torch.equal(loaded.output_layer.weight, fresh.output_layer.weight)
    saved, reloaded = fresh.state_dict(), loaded.state_dict()
    assert all(torch.equal(saved[key], reloaded[key]) for key in saved)


def test_identity_init_needs_a_residual_denoiser() -> None:
    from lorun_peft.denoisers import build_denoiser

    with pytest.raises(ValueError, match="identity_init=True needs residual=True"):
        build_denoiser("unet", 3, identity_init=True, residual=False)

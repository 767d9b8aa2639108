"""The compressive-sensing task denoiser after CPP-Net (Guo and Gan, CVPR 2024), model type ``lorun-cppnet``.

The LoRun paper's supplement (Fig. 16) uses CPP-Net's dual path fusion block (DPFB) as the CS stage
denoiser. Path one is a four-level U-Net of (a) depth-wise channel attention blocks (DCAB: depthwise
3x3, LayerNorm, a 4x inverted-bottleneck of 1x1 convs and squeeze-excitation channel attention).
Path two keeps full resolution: an adaptive soft-threshold of the input features, then (b) one
multi-scale transformer block (MSTB) per decoder level, whose cross attention builds an ``H x W``
attention map from row/column profiles of the full-resolution path and of the decoder feature, so
every scale is fused at full resolution at a cost linear in H*W. The two paths and the input
features are concatenated and fused by DCABs into the output. Every projection is a ``groups=1``
``nn.Conv2d``/``nn.ConvTranspose2d`` reachable by the stage LoRA; only the depthwise 3x3 convs are
left to the shared weights. The default (gray, width 32) has about 1.58M parameters; see
docs/task_denoisers.md for the comparison with the paper's 15.96M / 9 per stage and for the choices
made where the papers leave details open.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn

from .base import DenoiserConfig, DenoiserPreTrainedModel, check_levels
from .blocks import LayerNorm2d


@strict
class CPPNetConfig(DenoiserConfig):
    """Config of :class:`CPPNetDenoiser` (defaults: CPP-Net's gray CS setting, width 32, reduction 8).

    base_channels: feature width of the first level; level i has ``base_channels * 2**i`` channels.
    num_levels: resolution levels of the U-Net path (``num_levels - 1`` stride-2 downsamplings; H, W
        padded to ``2**(num_levels - 1)``); the transformer path has one MSTB per level below the first.
    reduction: channel reduction of the squeeze-excitation / attention gates.
    ffn_expansion: hidden width multiplier of the DCAB's 1x1 inverted bottleneck.
    """

    model_type = "lorun-cppnet"

    base_channels: int = 32
    num_levels: int = 4
    reduction: int = 8
    ffn_expansion: int = 4

    def __post_init__(self, **kwargs: Any) -> None:
        for name in ("base_channels", "reduction", "ffn_expansion"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_levels("num_levels (the MSTB path fuses lower levels, so >= 2)", self.num_levels, 2)
        super().__post_init__(**kwargs)


def _gate(channels: int, reduction: int, bias: bool = True) -> nn.Sequential:
    """1x1 squeeze, GELU, 1x1 excite, sigmoid: ``(B, C, h, w)`` -> weights in (0, 1) of the same shape."""
    hidden = max(1, channels // reduction)
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1, bias=bias),
        nn.GELU(),
        nn.Conv2d(hidden, channels, 1, bias=bias),
        nn.Sigmoid(),
    )


class DCAB(nn.Module):
    """Depth-wise channel attention block, ``(B, C, H, W)`` -> same.

    ``x + CA(pw2(gelu(pw1(LN(dw3x3(x))))))`` with squeeze-excitation channel attention ``CA``.
    """

    def __init__(self, channels: int, reduction: int, expansion: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = LayerNorm2d(channels)
        self.expand = nn.Conv2d(channels, channels * expansion, 1)
        self.project = nn.Conv2d(channels * expansion, channels, 1)
        self.channel_gate = _gate(channels, reduction, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(F.gelu(self.expand(self.norm(self.depthwise(x)))))
        return x + y * self.channel_gate(y.mean(dim=(-2, -1), keepdim=True))


def _profiles_to_full_resolution(profile: Tensor, channels: int) -> Tensor:
    """Turn a ``(B, s*C, n/s)`` row or column profile of a level ``s`` times coarser into ``(B, C, n)``.

    Channel-to-space along one axis (a 1-D pixel shuffle): the s channel groups fill the s sub-pixel
    positions of each coarse pixel, so the profile stays aligned with the full-resolution grid.
    """
    b, sc, n = profile.shape
    s = sc // channels
    return profile.view(b, channels, s, n).transpose(-2, -1).reshape(b, channels, n * s)


class CrossScaleAttention(nn.Module):
    """MSCA of the MSTB: attention of the full-resolution path ``x`` (C) with a level feature ``y`` (s*C).

    Two ``H x W`` maps are outer products of profiles, ``q = gate(x_rows (x) y_cols)`` and
    ``k = gate(y_rows (x) x_cols)`` (``y``'s profiles are brought to full resolution by
    channel-to-space); the output is ``v(x) * q * k`` with ``v`` = depthwise 3x3, GELU, 1x1.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.channels = channels
        self.query_gate = _gate(channels, reduction)
        self.key_gate = _gate(channels, reduction)
        self.value_depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.value = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        c = self.channels
        x_rows, x_cols = x.mean(dim=-1, keepdim=True), x.mean(dim=-2, keepdim=True)  # (B,C,H,1), (B,C,1,W)
        y_rows = _profiles_to_full_resolution(y.mean(dim=-1), c).unsqueeze(-1)  # (B, C, H, 1)
        y_cols = _profiles_to_full_resolution(y.mean(dim=-2), c).unsqueeze(-2)  # (B, C, 1, W)
        query = self.query_gate(x_rows @ y_cols)
        key = self.key_gate(y_rows @ x_cols)
        return self.value(F.gelu(self.value_depthwise(x))) * query * key


class MSTB(nn.Module):
    """Multi-scale transformer block: ``x = LN(x); x = x + MSCA(x, LN(y)); x = DCAB(LN(x))``."""

    def __init__(self, channels: int, level_channels: int, reduction: int, expansion: int) -> None:
        super().__init__()
        self.norm_x = LayerNorm2d(channels)
        self.norm_y = LayerNorm2d(level_channels)
        self.attn = CrossScaleAttention(channels, reduction)
        self.ffn_norm = LayerNorm2d(channels)
        self.ffn = DCAB(channels, reduction, expansion)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = self.norm_x(x)
        x = x + self.attn(x, self.norm_y(y))
        return self.ffn(self.ffn_norm(x))


class SoftThreshold(nn.Module):
    """Adaptive soft-threshold shortcut ``x + soft(x, t)``.

    Per channel, ``t = gate(mu * mean(x)) * mu * mean(x)`` with a learnable ``mu`` (CPP-Net's step * lambda).
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gate = _gate(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        level = x.mean(dim=(-2, -1), keepdim=True) * self.mu
        threshold = self.gate(level) * level
        return x + torch.sign(x) * F.relu(x.abs() - threshold)


class CPPNetDenoiser(DenoiserPreTrainedModel):
    """CPP-Net's dual path fusion block as a denoiser: ``(B, in, H, W)`` -> ``(B, out, H, W)``.

    ``f = DCAB(conv1x1(z))``; U-Net path: per level DCAB + 2x2 stride-2 conv (doubling) + LN, a DCAB
    bottleneck, then per level 2x2 ConvTranspose2d + LN + DCAB plus the encoder skip; transformer path:
    ``s = SoftThreshold(f)`` fused with the bottleneck and every decoder level below the first by an
    MSTB (the first decoder level adds ``s`` as its skip); fusion: ``cat(f, t, u)`` -> DCAB -> conv1x1
    -> DCAB -> DCAB -> conv1x1.
    """

    config_class = CPPNetConfig

    def __init__(self, config: CPPNetConfig) -> None:
        super().__init__(config)
        c, red, exp = config.base_channels, config.reduction, config.ffn_expansion
        widths = [c * 2**i for i in range(config.num_levels)]
        self.stem = nn.Sequential(nn.Conv2d(config.net_in_channels, c, 1), DCAB(c, red, exp))
        self.encoders = nn.ModuleList(
            [
                nn.Sequential(DCAB(w, red, exp), nn.Conv2d(w, 2 * w, 2, stride=2), LayerNorm2d(2 * w))
                for w in widths[:-1]
            ]
        )
        self.bottleneck = DCAB(widths[-1], red, exp)
        self.decoders = nn.ModuleList(
            [
                nn.Sequential(nn.ConvTranspose2d(2 * w, w, 2, stride=2), LayerNorm2d(w), DCAB(w, red, exp))
                for w in widths[:-1]
            ]
        )
        self.threshold = SoftThreshold(c, red)
        self.transformers = nn.ModuleList([MSTB(c, w, red, exp) for w in widths[1:]])
        self.fusion = nn.Sequential(
            DCAB(3 * c, red, exp),
            nn.Conv2d(3 * c, c, 1),
            DCAB(c, red, exp),
            DCAB(c, red, exp),
            nn.Conv2d(c, config.out_channels, 1),
        )
        self.post_init()

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.num_levels - 1)

    @property
    def output_layer(self) -> nn.Module:
        return self.fusion[-1]

    def body(self, x: Tensor) -> Tensor:
        feat = self.stem(x)
        skips, u = [], feat
        for encoder in self.encoders:
            u = encoder(u)
            skips.append(u)
        u = self.bottleneck(u)
        shrunk = self.threshold(feat)
        t = self.transformers[-1](shrunk, u)
        for level in reversed(range(len(self.decoders))):
            if level > 0:
                u = self.decoders[level](u) + skips[level - 1]
                t = self.transformers[level - 1](t, u)
            else:
                u = self.decoders[level](u) + shrunk
        return self.fusion(torch.cat([feat, t, u], dim=1))

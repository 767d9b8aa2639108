"""The CASSI task denoiser after SSR (Zhang, Zeng et al., CVPR 2024), model type ``lorun-ssr``.

The LoRun paper's supplement (Fig. 15) uses the stage denoiser of SSR ("spectral-spatial
rectification") for CASSI: a three-level U-shaped network whose every level is a spectral-spatial
rectification block made of (c) a window-based spectral-wise self-attention (WSSA: a ``C x C``
attention between bands inside each ``w x w`` window) with a feed-forward network, (a) a convolution
modulated block (CMB: a large depthwise kernel modulates a 1x1 value branch) and (b) a spatial
alignment block (SAB: a per-pixel spatial estimator gates a depthwise-conv spectral weight). Every
projection is a ``groups=1`` ``nn.Conv2d``/``nn.ConvTranspose2d``, so the stage LoRA of
``lorun_peft.tuners`` reaches it; the depthwise convs (positional 5x5, FFN 3x3, CMB 11x11, SAB 3x3)
are left to the shared weights. Attention is local (cost linear in H*W), any band count and any H, W
work. The default (28 bands, width 28) has about 0.58M parameters, the paper's 5.18M / 9 per stage.
See docs/task_denoisers.md for the choices made where the papers leave details open.
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
class SSRConfig(DenoiserConfig):
    """Config of :class:`SSRDenoiser` (defaults: the 28-band SD-CASSI setting of SSR).

    base_channels: feature width of the first level; level i has ``base_channels * 2**i`` channels.
    num_levels: resolution levels (``num_levels - 1`` stride-2 downsamplings; H, W padded to
        ``2**(num_levels - 1)``).
    window_size: side of the square windows of the spectral-wise attention (WSSA).
    ffn_expansion: hidden width multiplier of the feed-forward network after WSSA.
    cmb_kernel_size: kernel of the depthwise modulation conv of the CMB (odd).
    refine: end with one more CMB + SAB rectification block on the full-resolution features.
    """

    model_type = "lorun-ssr"

    in_channels: int = 28
    out_channels: int = 28
    base_channels: int = 28
    num_levels: int = 3
    window_size: int = 8
    ffn_expansion: int = 4
    cmb_kernel_size: int = 11
    refine: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        check_levels("num_levels", self.num_levels)
        for name in ("base_channels", "window_size", "ffn_expansion"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cmb_kernel_size < 1 or self.cmb_kernel_size % 2 == 0:
            raise ValueError(f"cmb_kernel_size must be a positive odd number, got {self.cmb_kernel_size}")
        super().__post_init__(**kwargs)


class WindowSpectralAttention(nn.Module):
    """WSSA: spectral-wise self-attention inside non-overlapping ``w x w`` windows, ``(B, C, H, W)``.

    In each window the C channels attend to each other (a ``C x C`` map whose entries are dot products
    over the window's pixels), so the cost is ``O(H W C^2)``. H, W need not be multiples of the window:
    q, k, v are zero-padded after their (bias-free) projection, and zero pixels add nothing to the dot
    products, so a border window simply covers fewer pixels.
    """

    def __init__(self, channels: int, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.scale = window_size**-1.0  # 1 / sqrt(pixels per window)
        self.to_qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def _windows(self, t: Tensor) -> Tensor:
        b, c, h, w = t.shape
        s = self.window_size
        t = t.view(b, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5)
        return t.reshape(b, h // s, w // s, c, s * s)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.window_size
        qkv = F.pad(self.to_qkv(x), (0, (-w) % s, 0, (-h) % s))
        q, k, v = (self._windows(t) for t in qkv.chunk(3, dim=1))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = attn @ v  # (B, H/s, W/s, C, s*s)
        hp, wp = qkv.shape[-2:]
        out = out.view(b, hp // s, wp // s, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hp, wp)
        return self.to_out(out[..., :h, :w])


class FeedForward(nn.Module):
    """1x1 expand, GELU, depthwise 3x3, GELU, 1x1 project: ``(B, C, H, W)`` -> same."""

    def __init__(self, channels: int, expansion: int) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(F.gelu(self.depthwise(F.gelu(self.expand(x)))))


class ConvModulation(nn.Module):
    """CMB: ``to_out(dw_k(to_a(x)) * to_v(x))``, a large-kernel depthwise modulation of a value branch."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.to_a = nn.Conv2d(channels, channels, 1, bias=False)
        self.modulation = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.to_v = nn.Conv2d(channels, channels, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_out(self.modulation(self.to_a(x)) * self.to_v(x))


class SpatialAlignment(nn.Module):
    """SAB: a one-channel spatial map (conv3x3 over all channels) gates a per-channel sigmoid weight.

    ``f = proj(x)``; ``out = to_out(sigmoid(dw3x3(f)) * gelu(conv3x3(f -> 1)))``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.estimator = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        self.spectral_weight = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.proj(x)
        return self.to_out(torch.sigmoid(self.spectral_weight(f)) * F.gelu(self.estimator(f)))


class RectificationBlock(nn.Module):
    """SRB: ``x + CMB(LN(x))`` then ``x + SAB(GN(x))`` (GN with one group per channel)."""

    def __init__(self, channels: int, cmb_kernel_size: int) -> None:
        super().__init__()
        self.cmb_norm = LayerNorm2d(channels)
        self.cmb = ConvModulation(channels, cmb_kernel_size)
        self.sab_norm = nn.GroupNorm(channels, channels)
        self.sab = SpatialAlignment(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.cmb(self.cmb_norm(x))
        return x + self.sab(self.sab_norm(x))


class SpectralSpatialBlock(nn.Module):
    """SSRB: depthwise 5x5 position encoding, WSSA + FFN, then the CMB + SAB rectification block."""

    def __init__(self, channels: int, config: SSRConfig) -> None:
        super().__init__()
        self.position = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.attn_norm = LayerNorm2d(channels)
        self.attn = WindowSpectralAttention(channels, config.window_size)
        self.ffn_norm = nn.GroupNorm(channels, channels)
        self.ffn = FeedForward(channels, config.ffn_expansion)
        self.rectify = RectificationBlock(channels, config.cmb_kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.position(x)
        x = x + self.attn(self.attn_norm(x))
        x = x + self.ffn(self.ffn_norm(x))
        return self.rectify(x)


class SSRDenoiser(DenoiserPreTrainedModel):
    """SSR-style U-shaped denoiser: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.

    conv3x3 embedding; per level on the way down an SSRB then a 4x4 stride-2 conv doubling the width;
    an SSRB bottleneck; on the way up a 2x2 ConvTranspose2d halving the width, a 1x1 fusion of the
    skip concatenation and an SSRB; an optional rectification block; a conv3x3 head.
    """

    config_class = SSRConfig

    def __init__(self, config: SSRConfig) -> None:
        super().__init__(config)
        widths = [config.base_channels * 2**i for i in range(config.num_levels)]
        self.embedding = nn.Conv2d(config.net_in_channels, widths[0], 3, padding=1, bias=False)
        self.encoders = nn.ModuleList([SpectralSpatialBlock(c, config) for c in widths[:-1]])
        self.downsamplers = nn.ModuleList(
            [nn.Conv2d(c, c * 2, 4, stride=2, padding=1, bias=False) for c in widths[:-1]]
        )
        self.bottleneck = SpectralSpatialBlock(widths[-1], config)
        self.upsamplers = nn.ModuleList([nn.ConvTranspose2d(c * 2, c, 2, stride=2) for c in widths[:-1]])
        self.fusions = nn.ModuleList([nn.Conv2d(c * 2, c, 1, bias=False) for c in widths[:-1]])
        self.decoders = nn.ModuleList([SpectralSpatialBlock(c, config) for c in widths[:-1]])
        self.refine = (
            RectificationBlock(widths[0], config.cmb_kernel_size) if config.refine else nn.Identity()
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, 3, padding=1, bias=False)
        self.post_init()

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.num_levels - 1)

    @property
    def output_layer(self) -> nn.Module:
        return self.head

    def body(self, x: Tensor) -> Tensor:
        x = self.embedding(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downsamplers):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for level in reversed(range(len(self.decoders))):
            x = self.fusions[level](torch.cat([self.upsamplers[level](x), skips[level]], dim=1))
            x = self.decoders[level](x)
        return self.head(self.refine(x))

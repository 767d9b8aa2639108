"""The paper's classic U-Net denoiser (supplement Fig. 14), model type ``lorun-unet``.

``depth`` resolution levels of widths ``base_channels * 2**i``: a double-conv block per level on the way
down (max-pool or strided-conv downsampling between levels), and on the way up an upsampling step
(bilinear upsample + conv3x3, or a 2x2 ConvTranspose2d) that halves the width, a skip concatenation and
a double-conv block; a 1x1 conv head. The default (width 32, 3 levels, bilinear) has 517,153
parameters for gray images, the paper's ~0.517M per block (Table II: Block-9 = 4.65M). The issue-5
reference setup, a 3-level U-Net of width 16, is ``UNetConfig(base_channels=16, depth=3)``.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn

from .base import DenoiserConfig, DenoiserPreTrainedModel, check_levels
from .blocks import DoubleConv


@strict
class UNetConfig(DenoiserConfig):
    """Config of :class:`UNetDenoiser`.

    base_channels: width of the first level; level i has ``base_channels * 2**i`` channels.
    depth: number of resolution levels (``depth - 1`` downsamplings; H, W padded to ``2**(depth-1)``).
    downsample: ``"maxpool"`` (2x2 max-pool) or ``"strided"`` (2x2 conv with stride 2).
    upsample: ``"bilinear"`` (bilinear x2 then conv3x3) or ``"transpose"`` (2x2 ConvTranspose2d, stride 2).
    """

    model_type = "lorun-unet"

    base_channels: int = 32
    depth: int = 3
    downsample: str = "maxpool"
    upsample: str = "bilinear"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        check_levels("depth", self.depth)
        if self.downsample not in ("maxpool", "strided"):
            raise ValueError(f"downsample must be 'maxpool' or 'strided', got {self.downsample!r}")
        if self.upsample not in ("bilinear", "transpose"):
            raise ValueError(f"upsample must be 'bilinear' or 'transpose', got {self.upsample!r}")
        super().__post_init__(**kwargs)


def _down(channels: int, mode: str) -> nn.Module:
    return nn.MaxPool2d(2) if mode == "maxpool" else nn.Conv2d(channels, channels, 2, stride=2)


def _up(in_channels: int, out_channels: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
    )


class UNetDenoiser(DenoiserPreTrainedModel):
    """Classic U-Net: ``(B, in_channels, H, W)`` (+ optional noise map) -> ``(B, out_channels, H, W)``."""

    config_class = UNetConfig
    supports_gradient_checkpointing = True

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        widths = [config.base_channels * 2**i for i in range(config.depth)]
        self.encoders = nn.ModuleList(
            [DoubleConv(c_in, c_out) for c_in, c_out in zip([config.net_in_channels, *widths[:-1]], widths)]
        )
        self.downsamplers = nn.ModuleList([_down(c, config.downsample) for c in widths[:-1]])
        self.upsamplers = nn.ModuleList([_up(c * 2, c, config.upsample) for c in widths[:-1]])
        self.decoders = nn.ModuleList([DoubleConv(c * 2, c) for c in widths[:-1]])
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)
        self.post_init()

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.depth - 1)

    @property
    def output_layer(self) -> nn.Module:
        return self.head

    def body(self, x: Tensor) -> Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                skips.append(x)
                x = self.downsamplers[level - 1](x)
            x = self.checkpointed(encoder, x)
        for level in reversed(range(len(self.decoders))):
            up = self.checkpointed(self.upsamplers[level], x)
            x = self.checkpointed(self.decoders[level], torch.cat([skips[level], up], dim=1))
        return self.head(x)

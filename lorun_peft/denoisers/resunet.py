"""The USRNet-style residual U-Net prior for super-resolution, model type ``lorun-resunet``.

A conv3x3 head, then per level ``num_res_blocks`` residual blocks (conv-ReLU-conv + skip) and a 2x2
stride-2 conv to the next width; a body of residual blocks at the coarsest level; on the way up a 2x2
stride-2 ConvTranspose2d and residual blocks, with additive skips (``up(x + skip)``) as in USRNet; a
conv3x3 tail. USRNet's widths (64, 128, 256, 512) with 2 residual blocks give 17.0M parameters here; the
default keeps USRNet's 2 blocks per level with widths (12, 24, 48, 96): 599,859 parameters on RGB, near
the paper's 0.59M (Table VIII, Block-1).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from torch import Tensor, nn

from .base import DenoiserConfig, DenoiserPreTrainedModel
from .blocks import ResBlock


@strict
class ResUNetConfig(DenoiserConfig):
    """Config of :class:`ResUNetDenoiser` (RGB by default, the SR setting).

    channels: width of each level, finest first (H, W padded to ``2**(len(channels)-1)``).
    num_res_blocks: residual blocks per level (and in the body).
    """

    model_type = "lorun-resunet"

    in_channels: int = 3
    out_channels: int = 3
    channels: list[int] | tuple[int, ...] = (12, 24, 48, 96)
    num_res_blocks: int = 2

    def __post_init__(self, **kwargs: Any) -> None:
        self.channels = list(self.channels)
        if not self.channels or min(self.channels) < 1 or self.num_res_blocks < 0:
            raise ValueError(
                "channels must be a non-empty list of positive widths and num_res_blocks >= 0, got "
                f"{self.channels}, {self.num_res_blocks}"
            )
        super().__post_init__(**kwargs)


class ResUNetDenoiser(DenoiserPreTrainedModel):
    """USRNet-style ResUNet: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""

    config_class = ResUNetConfig
    supports_gradient_checkpointing = True

    def __init__(self, config: ResUNetConfig) -> None:
        super().__init__(config)
        widths, nb = config.channels, config.num_res_blocks
        self.head = nn.Conv2d(config.net_in_channels, widths[0], 3, padding=1)
        self.downs = nn.ModuleList(
            nn.Sequential(*(ResBlock(c) for _ in range(nb)), nn.Conv2d(c, c_next, 2, stride=2))
            for c, c_next in zip(widths[:-1], widths[1:])
        )
        self.body_blocks = nn.Sequential(*(ResBlock(widths[-1]) for _ in range(nb)))
        self.ups = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(c_next, c, 2, stride=2), *(ResBlock(c) for _ in range(nb)))
            for c, c_next in zip(widths[:-1], widths[1:])
        )
        self.tail = nn.Conv2d(widths[0], config.out_channels, 3, padding=1)
        self.post_init()

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    @property
    def output_layer(self) -> nn.Module:
        return self.tail

    def body(self, x: Tensor) -> Tensor:
        skips = [self.head(x)]
        for down in self.downs:
            skips.append(self.checkpointed(down, skips[-1]))
        x = self.checkpointed(self.body_blocks, skips[-1])
        for level in reversed(range(len(self.ups))):
            x = self.checkpointed(self.ups[level], x + skips[level + 1])
        return self.tail(x + skips[0])

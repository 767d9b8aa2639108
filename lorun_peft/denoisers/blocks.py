"""Small building blocks shared by the denoiser families.

Only plain ``nn.Conv2d`` (groups=1) and norm layers, so the stage LoRA of ``lorun_peft.tuners`` can
reach every learnable weight in them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DoubleConv(nn.Sequential):
    """The U-Net block: conv3x3-ReLU-conv3x3-ReLU, ``(B, in, H, W)`` -> ``(B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    """The USRNet residual block: ``x + conv3x3(ReLU(conv3x3(x)))``, channels unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a ``(B, C, H, W)`` tensor (Restormer's norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

"""The paper's classic small Transformer denoiser (supplement Fig. 13), model type ``lorun-transformer``.

A conv3x3 embedding, ``num_blocks`` pre-norm Transformer blocks, a conv3x3 head. Each block is
``x + attention(norm(x))`` then ``x + ffn(norm(x))``. The attention is channel ("transposed",
Restormer MDTA-style) attention: queries, keys and values are 1x1-conv projections (``q_proj``,
``k_proj``, ``v_proj``, then ``o_proj``), and each head attends over its channels, so the attention map
is (C/heads x C/heads) and the cost grows linearly with H*W: affordable at 256x256 and with 28 bands, with
a global receptive field and no window padding. The FFN is 1x1 conv -> depth-wise 3x3 conv -> GELU -> 1x1
conv; the depth-wise conv (groups > 1) gives the block local spatial mixing and is the one layer LoRA
skips. Default: width 16, 4 blocks, 2 heads, FFN expansion 2.25: 11,177 parameters for gray images, the
paper's ~11k per block (Table II: Block-9 = 0.10M).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn

from .base import DenoiserConfig, DenoiserPreTrainedModel
from .blocks import LayerNorm2d


@strict
class TransformerConfig(DenoiserConfig):
    """Config of :class:`TransformerDenoiser`.

    hidden_channels: embedding width C (a multiple of num_heads).
    num_blocks: number of Transformer blocks.
    num_heads: attention heads; each attends over C / num_heads channels.
    ffn_expansion: FFN hidden width = round(C * ffn_expansion).
    """

    model_type = "lorun-transformer"

    hidden_channels: int = 16
    num_blocks: int = 4
    num_heads: int = 2
    ffn_expansion: float = 2.25

    def __post_init__(self, **kwargs: Any) -> None:
        if min(self.hidden_channels, self.num_blocks, self.num_heads) < 1 or self.ffn_expansion <= 0:
            raise ValueError(
                "hidden_channels, num_blocks, num_heads and ffn_expansion must be positive, got "
                f"{self.hidden_channels}, {self.num_blocks}, {self.num_heads}, {self.ffn_expansion}"
            )
        if self.hidden_channels % self.num_heads:
            raise ValueError(
                f"hidden_channels ({self.hidden_channels}) must be a multiple of num_heads ({self.num_heads})"
            )
        super().__post_init__(**kwargs)


class ChannelAttention(nn.Module):
    """Multi-head transposed attention over channels: ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Per head, queries and keys are L2-normalised along the pixels and their (C/h x C/h) similarity is
    scaled by a learned per-head temperature before the softmax.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads))
        self.q_proj = nn.Conv2d(channels, channels, 1)
        self.k_proj = nn.Conv2d(channels, channels, 1)
        self.v_proj = nn.Conv2d(channels, channels, 1)
        self.o_proj = nn.Conv2d(channels, channels, 1)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.temperature)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (
            proj(x).reshape(b, self.num_heads, c // self.num_heads, h * w)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature.view(1, -1, 1, 1)
        return self.o_proj((attn.softmax(dim=-1) @ v).reshape(b, c, h, w))


class FeedForward(nn.Sequential):
    """1x1 conv -> depth-wise 3x3 conv -> GELU -> 1x1 conv, ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(self, channels: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels)
        self.attn = ChannelAttention(channels, num_heads)
        self.norm2 = LayerNorm2d(channels)
        self.ffn = FeedForward(channels, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TransformerDenoiser(DenoiserPreTrainedModel):
    """Small channel-attention Transformer: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        c = config.hidden_channels
        hidden = max(1, round(c * config.ffn_expansion))
        self.embed = nn.Conv2d(config.net_in_channels, c, 3, padding=1)
        self.blocks = nn.Sequential(
            *(TransformerBlock(c, config.num_heads, hidden) for _ in range(config.num_blocks))
        )
        self.head = nn.Conv2d(c, config.out_channels, 3, padding=1)
        self.post_init()

    @property
    def output_layer(self) -> nn.Module:
        return self.head

    def body(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(x)))

"""Small models with Conv2d / ConvTranspose2d / Linear layers of known sizes for the StageLoRA tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyDenoiser(nn.Module):
    """(B, 3, H, W) -> (B, 3, H, W) with every layer kind StageLoRA adapts (H, W even).

    Layer sizes (in, out): c1 3->20 (3x3), dw 20 depthwise (skipped), down 20->30 (2x2 s2),
    dil 30->30 (3x3, dilation 2, reflect padding), up 30->16 (ConvT 3x3 s2 op1), lin 16->24, lin2 24->16,
    out 16->3 (1x1). ``peft_native=True`` keeps only what PEFT's own LoRA layers compute correctly:
    no ConvTranspose2d (PEFT has none), no dilation or non-zero padding mode (PEFT's conv LoRA drops them).
    """

    def __init__(self, peft_native: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 20, 3, padding=1)
        self.dw = nn.Conv2d(20, 20, 3, padding=1, groups=20)
        self.down = nn.Conv2d(20, 30, 2, stride=2)
        if peft_native:
            self.dil = nn.Conv2d(30, 30, 3, padding=1)
            self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(30, 16, 1))
        else:
            self.dil = nn.Conv2d(30, 30, 3, padding=2, dilation=2, padding_mode="reflect")
            self.up = nn.ConvTranspose2d(30, 16, 3, stride=2, padding=1, output_padding=1)
        self.lin = nn.Linear(16, 24)
        self.lin2 = nn.Linear(24, 16)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = self.dw(h)
        h = torch.relu(self.down(h))
        h = torch.relu(self.dil(h))
        h = self.up(h)
        h = self.lin2(torch.relu(self.lin(h.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return x + self.out(h)


#: (in, out) of every layer StageLoRA targets by default in TinyDenoiser().
TINY_DIMS = {
    "c1": (3, 20),
    "down": (20, 30),
    "dil": (30, 30),
    "up": (30, 16),
    "lin": (16, 24),
    "lin2": (24, 16),
    "out": (16, 3),
}


@pytest.fixture
def tiny():
    """Factory: ``tiny(seed=0, dtype=torch.float32, peft_native=False)`` -> a fresh TinyDenoiser."""

    def make(seed: int = 0, dtype: torch.dtype = torch.float32, peft_native: bool = False) -> TinyDenoiser:
        torch.manual_seed(seed)
        return TinyDenoiser(peft_native).to(dtype)

    return make


@pytest.fixture
def tiny_dims():
    return dict(TINY_DIMS)


def train_steps(
    model: nn.Module, num_stages: int, steps: int = 3, dtype=torch.float32, seed: int = 1
) -> None:
    """A few Adam steps through the K-stage loop so every stage's dW becomes non-zero and distinct."""
    from lorun_peft.tuners import stage

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        x = torch.randn(2, 3, 8, 8, generator=gen, dtype=dtype)
        target = torch.randn(2, 3, 8, 8, generator=gen, dtype=dtype)
        for k in range(num_stages):
            with stage(model, k):
                x = model(x)
        loss = (x - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def train():
    return train_steps

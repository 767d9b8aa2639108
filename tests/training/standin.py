"""A tiny CS-like unfolding model used by the training tests (and by the scripts they launch).

``TinyBlockCS`` is a block compressive-sensing operator (fixed Gaussian Phi on 4x4 blocks), and
``TinyUnfolding`` runs K PGD stages with learnable step sizes and one shared residual CNN. It honours
the contract the training loop relies on: ``model(measurement).images`` and ``model.physics.measure``.
Test-only: the package never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyBlockCS(nn.Module):
    """``y = conv2d(x, Phi, stride=b)`` with a fixed Gaussian ``Phi`` of ``m`` rows on ``b x b`` blocks."""

    def __init__(self, block: int = 4, rows: int = 4, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        phi = torch.randn(rows, 1, block, block, generator=generator) / block
        self.register_buffer("phi", phi)
        self.block = block

    def A(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.phi, stride=self.block)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return F.conv_transpose2d(y, self.phi, stride=self.block)

    def measure(
        self, x: Tensor, noise_sigma: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        y = self.A(x)
        if noise_sigma > 0:
            y = y + noise_sigma * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y


@dataclass
class Output:
    images: Tensor


class TinyUnfolding(nn.Module):
    """K PGD stages ``z = x - rho_k A^T(Ax - y)``, ``x = z + net(z)``; one shared net or K nets (block)."""

    def __init__(
        self, stages: int = 3, width: int = 8, block_mode: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.physics = TinyBlockCS()
        self.rho = nn.Parameter(torch.full((stages,), 0.5))
        count = stages if block_mode else 1
        self.nets = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1),
                nn.ReLU(),
                nn.Dropout2d(dropout),
                nn.Conv2d(width, 1, 3, padding=1),
            )
            for _ in range(count)
        )
        self.stages = stages
        self.adapters: nn.ModuleList | None = None

    def add_stage_adapters(self) -> None:
        """Phase-2 stand-in: freeze the nets, add one zero-initialised 3x3 conv per stage (trainable)."""
        self.nets.requires_grad_(False)
        self.adapters = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=1) for _ in range(self.stages))
        for adapter in self.adapters:
            nn.init.zeros_(adapter.weight)
            nn.init.zeros_(adapter.bias)

    def forward(self, measurement: Tensor) -> Output:
        x = self.physics.A_adjoint(measurement)
        for k in range(self.stages):
            z = x - self.rho[k] * self.physics.A_adjoint(self.physics.A(x) - measurement)
            x = z + self.nets[k % len(self.nets)](z)
            if self.adapters is not None:
                x = x + self.adapters[k](z)
        return Output(images=x)


def smooth_patches(count: int = 64, size: int = 16, seed: int = 0) -> Tensor:
    """``(count, 1, size, size)`` smooth images in [0, 1]: bilinearly upsampled 4x4 noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the trainable parameters' names and bytes (for cross-rank / cross-run comparison)."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

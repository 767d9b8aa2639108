"""Tiny builders shared by the unfolding tests: physics of each task, small denoisers, images."""

from __future__ import annotations

import torch

from lorun_peft.denoisers import UNetConfig, UNetDenoiser
from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, gaussian_kernel
from lorun_peft.unfolding import LoRunModel

TASKS = ("cs", "cassi", "sr2", "sr4")


def smooth_images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random smooth images in [0, 1]: upsampled coarse noise (structure a denoiser can learn)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, size // 4, size // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def make_physics(task: str, seed: int = 0):
    """(physics, image channels, image size) of a tiny instance of ``task``."""
    torch.manual_seed(seed)
    if task == "cs":
        return BlockCS(0.25, block_size=8), 1, 16
    if task == "cassi":
        generator = torch.Generator().manual_seed(seed)
        return CASSI((torch.rand(32, 32, generator=generator) > 0.5).float(), step=2), 8, 32
    if task == "sr2":
        return BlurDownsample(gaussian_kernel(5, 1.0), 2), 1, 16
    if task == "sr4":
        return BlurDownsample(gaussian_kernel(5, 1.2), 4), 1, 16
    raise ValueError(task)


def make_denoiser(channels: int, noise_level_map: bool = False, seed: int = 0) -> UNetDenoiser:
    torch.manual_seed(seed)
    config = UNetConfig(
        in_channels=channels, out_channels=channels, base_channels=4, depth=2, noise_level_map=noise_level_map
    )
    return UNetDenoiser(config)


def make_model(
    task: str = "cs",
    algorithm: str = "pgd",
    mode: str = "shared",
    num_stages: int = 3,
    noise_level_map: bool = False,
    seed: int = 0,
):
    """(model, images, measurement) for a tiny ``task``."""
    physics, channels, size = make_physics(task, seed)
    denoiser = make_denoiser(channels, noise_level_map, seed)
    model = LoRunModel.from_components(
        physics, denoiser, num_stages=num_stages, algorithm=algorithm, mode=mode
    )
    images = smooth_images(2, channels, size, seed)
    with torch.no_grad():
        measurement = physics.measure(images)
    return model, images, measurement


def train_adam(model: LoRunModel, images: torch.Tensor, steps: int, lr: float = 2e-3) -> tuple[float, float]:
    """Adam on the trainable parameters on one fixed batch; the eq. 13 loss before and after (no grad)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def loss() -> torch.Tensor:
        return model(model.physics.measure(images), labels=images).loss

    with torch.no_grad():
        before = loss().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        return before, loss().item()

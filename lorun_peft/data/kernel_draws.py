"""A new SR blur kernel for every training batch: one adapter set that serves all 12 kernels.

USRNet trains one model for many kernels by drawing the kernel per batch; the kernel is known at test
time and enters only the data step. :class:`RandomKernels`, given to :func:`lorun_peft.training.train` as
``physics_sampler``, writes a kernel drawn uniformly from a stack (e.g. the 12 of ``kernels_12.mat``) into
a :class:`~lorun_peft.physics.BlurDownsample` before every micro-batch. The draw comes from the generator
that ``train`` seeds with ``(seed, step, micro-batch)``, so resumed and multi-process runs draw the same
kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RandomKernels"]


class RandomKernels:
    """Write a kernel drawn uniformly from ``kernels`` (``(N, kh, kw)``) into ``physics.kernel``."""

    def __init__(self, kernels: Tensor) -> None:
        if not isinstance(kernels, Tensor) or kernels.ndim != 3 or kernels.shape[0] < 1:
            shape = tuple(kernels.shape) if isinstance(kernels, Tensor) else type(kernels).__name__
            raise ValueError(f"kernels must be an (N, kh, kw) tensor with N >= 1, got {shape}")
        if not torch.isfinite(kernels).all():
            raise ValueError("kernels contain NaN or Inf")
        self.kernels = kernels.detach().float().cpu()

    def draw(self, generator: torch.Generator) -> int:
        """Index of the kernel for one micro-batch."""
        return int(torch.randint(self.kernels.shape[0], (1,), generator=generator))

    def __call__(self, physics: torch.nn.Module, generator: torch.Generator) -> None:
        """Copy a random kernel into ``physics.kernel`` in place (shape, dtype and device are kept)."""
        target = getattr(physics, "kernel", None)
        if not isinstance(target, Tensor) or tuple(target.shape) != tuple(self.kernels.shape[1:]):
            shape = tuple(target.shape) if isinstance(target, Tensor) else None
            raise ValueError(
                f"RandomKernels needs a blur operator with a {tuple(self.kernels.shape[1:])} kernel, got "
                f"{type(physics).__name__} with kernel shape {shape}"
            )
        with torch.no_grad():
            target.copy_(self.kernels[self.draw(generator)])

"""Stage-wise gradient checkpointing of a LoRunModel: recompute each stage in the backward pass.

A mixin of :class:`~lorun_peft.unfolding.LoRunModel` (it overrides transformers' own
``gradient_checkpointing_enable``, which raises for models that do not declare support): only the K
stage inputs are kept, and ``denoiser=True`` also recomputes inside the denoiser level by level. The
forward pass calls ``self._gradient_checkpointing_func`` per stage when this is on.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.utils.checkpoint

__all__ = ["StageCheckpointingMixin"]


class StageCheckpointingMixin:
    """``gradient_checkpointing_enable(denoiser=False)`` / ``_disable()`` over the K stages."""

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, *, denoiser: bool = False
    ) -> None:
        """Recompute each stage in the backward pass instead of keeping its activations (training only).

        Only the K stage inputs are kept; each stage's activations exist once, during its backward.
        ``denoiser=True`` also recomputes inside the denoiser level by level (families with
        ``supports_gradient_checkpointing``), for the smallest peak. ``gradient_checkpointing_kwargs``
        go to ``torch.utils.checkpoint.checkpoint``; only the non-reentrant variant is supported (the
        reentrant one loses the gradients of parameters that are not stage inputs: step sizes, Phi, LoRA).
        """
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"]:
            raise ValueError(
                "use_reentrant=True is not supported: reentrant checkpointing drops the gradients of step "
                "sizes, a learned Phi and the LoRA factors; leave use_reentrant at False"
            )
        if denoiser:
            unable = [type(d).__name__ for d in self.denoisers if not d.supports_gradient_checkpointing]
            if unable:
                raise ValueError(
                    f"{unable[0]} cannot checkpoint inside the denoiser (no per-level recompute); use "
                    "denoiser=False (stage checkpointing works with every denoiser)"
                )
        for module in self.denoisers:
            if denoiser:
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            elif module.supports_gradient_checkpointing:
                module.activation_checkpointing_disable()
        self._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every stage's activations again (the default)."""
        for module in self.denoisers:
            if module.supports_gradient_checkpointing:
                module.activation_checkpointing_disable()
        self.gradient_checkpointing = False

    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def checkpoints_denoiser(self) -> bool:
        """Whether the denoiser recomputes level by level too (``..._enable(denoiser=True)``)."""
        return any(getattr(m, "gradient_checkpointing", False) for d in self.denoisers for m in d.modules())

"""What one training step feeds the model and reads back: seeded batches, measurements and the loss.

The batch and noise of step ``t`` on process ``rank`` are pure functions of ``(seed, t, micro-batch,
rank)`` (:func:`derive_seed`), which is what makes resume exact without checkpointing any iterator
position. Loss: mean squared error over all pixels of the batch, i.e. the paper's eq. 13 divided by
``C * H * W`` (see docs/training.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .config import UnfoldingTrainingConfig

#: A training source: clean patches ``(N, C, H, W)``, a map-style dataset of ``(C, H, W)`` items (or dicts
#: with ``"pixel_values"``), or a function ``(batch_size, generator) -> (B, C, H, W)``.
TrainSource = Tensor | Sequence[Any] | Dataset | Callable[[int, torch.Generator], Tensor]


def derive_seed(seed: int, step: int, micro: int, rank: int, stream: str) -> int:
    """A 63-bit seed that is a pure function of its arguments (sha256, stable across runs and platforms)."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _as_image_tensor(item: Any) -> Tensor:
    if isinstance(item, dict):
        if "pixel_values" not in item:
            raise ValueError(
                f"dataset items that are dicts need a 'pixel_values' key, got keys {sorted(item)}"
            )
        item = item["pixel_values"]
    elif isinstance(item, tuple | list):
        item = item[0]
    if not isinstance(item, Tensor) or item.ndim != 3:
        raise ValueError(
            f"each training item must be a (C, H, W) tensor, got {type(item).__name__} "
            f"{tuple(item.shape) if isinstance(item, Tensor) else ''}"
        )
    return item


class StepBatches(Dataset):
    """Map-style dataset whose item ``k`` is micro-batch ``k % accumulation`` of step ``k // accumulation``.

    The patch indices (or the source function's generator) are seeded with
    :func:`derive_seed` ``(seed, step, micro, rank, "batch")``, so any step's batch can be produced again
    without replaying the ones before it. A dataset with ``set_epoch`` (e.g. ``RandomPatchDataset``, whose
    item ``i`` is a pure function of ``(seed, epoch, i)``) is set to ``epoch = step`` first, so every step
    sees fresh crops and stays reproducible.
    """

    def __init__(self, source: TrainSource, batch_size: int, seed: int, rank: int, accumulation: int) -> None:
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.accumulation = accumulation
        if isinstance(source, Tensor):
            if source.ndim != 4 or source.shape[0] == 0:
                raise ValueError(
                    f"a tensor train_source must be (N, C, H, W) with N >= 1, got {tuple(source.shape)}"
                )
            self.kind = "tensor"
        elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
            if len(source) == 0:
                raise ValueError("train_source is an empty dataset")
            self.kind = "dataset"
        elif callable(source):
            self.kind = "function"
        else:
            raise ValueError(
                "train_source must be a (N, C, H, W) tensor, a map-style dataset (len + getitem) or a "
                f"function (batch_size, generator) -> (B, C, H, W); got {type(source).__name__}"
            )

    def __getitem__(self, index: int) -> Tensor:
        step, micro = divmod(index, self.accumulation)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, step, micro, self.rank, "batch"))
        if self.kind == "tensor":
            picks = torch.randint(len(self.source), (self.batch_size,), generator=generator)
            return self.source[picks].clone()
        if self.kind == "function":
            batch = self.source(self.batch_size, generator)
            if not isinstance(batch, Tensor) or batch.ndim != 4 or batch.shape[0] != self.batch_size:
                raise ValueError(
                    f"the train_source function must return a ({self.batch_size}, C, H, W) tensor, got "
                    f"{tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__}"
                )
            return batch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(step)
        picks = torch.randint(len(self.source), (self.batch_size,), generator=generator).tolist()
        return torch.stack([_as_image_tensor(self.source[i]) for i in picks])


def _model_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.get_default_dtype()


def _images(output: Any) -> Tensor:
    images = getattr(output, "images", None)
    if images is None and isinstance(output, dict):
        images = output.get("images")
    if not isinstance(images, Tensor):
        raise ValueError(
            f"the model's forward must return an object with an `.images` tensor, got {type(output)}"
        )
    return images


def reconstruction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Training loss: MSE over every pixel of the batch, computed in float32 (eq. 13 / (C*H*W))."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"model output {tuple(prediction.shape)} does not match the target {tuple(target.shape)}"
        )
    return F.mse_loss(prediction.float(), target.float())


def _measure(
    physics: Any, clean: Tensor, config: UnfoldingTrainingConfig, generator: torch.Generator
) -> Tensor:
    """Simulated measurement of a batch: one noise std, or one per sample drawn in the configured range."""
    if config.noise_sigma_max is None:
        return physics.measure(clean, config.noise_sigma, generator)
    low, high = config.noise_sigma, config.noise_sigma_max
    y = physics.measure(clean, 0.0, generator)
    sigma = low + (high - low) * torch.rand(y.shape[0], generator=generator, device=y.device, dtype=y.dtype)
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return y + sigma.view(-1, *([1] * (y.ndim - 1))) * noise

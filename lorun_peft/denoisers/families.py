"""Build a fresh denoiser of a family by name, as the training recipes' ``--denoiser`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import DenoiserPreTrainedModel
from .cppnet import CPPNetConfig, CPPNetDenoiser
from .resunet import ResUNetConfig, ResUNetDenoiser
from .ssr import SSRConfig, SSRDenoiser
from .transformer import TransformerConfig, TransformerDenoiser
from .unet import UNetConfig, UNetDenoiser

__all__ = ["DENOISER_FAMILIES", "build_denoiser"]


def _unet(common: dict[str, Any], width: int | None, depth: int | None) -> DenoiserPreTrainedModel:
    extra = {"base_channels": width} if width else {}
    return UNetDenoiser(UNetConfig(**common, **extra, **({"depth": depth} if depth else {})))


def _transformer(common: dict[str, Any], width: int | None, depth: int | None) -> DenoiserPreTrainedModel:
    heads = 2 if width is None or width % 2 == 0 else 1
    extra = {"hidden_channels": width, "num_heads": heads} if width else {}
    return TransformerDenoiser(TransformerConfig(**common, **extra))


def _resunet(common: dict[str, Any], width: int | None, depth: int | None) -> DenoiserPreTrainedModel:
    levels = depth or 4
    extra = {"channels": [width * 2**i for i in range(levels)]} if width else {}
    return ResUNetDenoiser(ResUNetConfig(**common, **extra))


def _ssr(common: dict[str, Any], width: int | None, depth: int | None) -> DenoiserPreTrainedModel:
    extra = {"base_channels": width} if width else {}
    return SSRDenoiser(SSRConfig(**common, **extra, **({"num_levels": depth} if depth else {})))


def _cppnet(common: dict[str, Any], width: int | None, depth: int | None) -> DenoiserPreTrainedModel:
    extra = {"base_channels": width} if width else {}
    levels = {"num_levels": max(2, depth)} if depth else {}
    return CPPNetDenoiser(CPPNetConfig(**common, **extra, **levels))


#: ``--denoiser`` name -> builder ``(config keywords, width, depth) -> model``.
DENOISER_FAMILIES: dict[str, Callable[[dict[str, Any], int | None, int | None], DenoiserPreTrainedModel]] = {
    "unet": _unet,
    "transformer": _transformer,
    "resunet": _resunet,
    "ssr": _ssr,
    "cppnet": _cppnet,
}


def build_denoiser(
    name: str, channels: int, width: int | None = None, depth: int | None = None, **kwargs: Any
) -> DenoiserPreTrainedModel:
    """A fresh denoiser of family ``name`` for ``channels``-channel images (``kwargs`` go to its config).

    ``width``: the family's base width (U-Net ``base_channels``, ...); ``depth``: its number of levels.
    """
    if name not in DENOISER_FAMILIES:
        raise ValueError(f"denoiser must be one of {tuple(DENOISER_FAMILIES)}, got {name!r}")
    return DENOISER_FAMILIES[name](
        {"in_channels": channels, "out_channels": channels, **kwargs}, width, depth
    )

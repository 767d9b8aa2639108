"""Common base for the denoisers (PMMs) that the unfolding stages share.

Every family (U-Net, Transformer, ResUNet) is a transformers ``PreTrainedConfig`` plus a
``PreTrainedModel`` registered with ``AutoConfig``/``AutoModel``, so a backbone round-trips through
``save_pretrained``/``from_pretrained`` as ``config.json`` + ``model.safetensors``. This module holds
what the families share: the config fields the unfolding loop relies on (``in_channels``,
``out_channels``, ``residual``, ``noise_level_map``), the input checks, the optional noise-level
channel, padding to the multiple the depth needs, the global residual, PyTorch's default
initialisation (instead of transformers' N(0, 0.02)), a strict ``from_pretrained`` that raises on
missing/unexpected keys, atomic saving, and the helpers ``denoiser_from_config`` and
``count_parameters``. ``forward`` returns a plain tensor, not a ``ModelOutput``: it is called K times
per unfolding pass and nothing but the image is ever needed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from lorun_peft.pretrained_io import raise_on_loading_problems, save_atomically


@strict
class DenoiserConfig(PreTrainedConfig):
    """Fields every denoiser family shares.

    in_channels / out_channels: image channels (1 gray, 3 RGB, 28 CASSI bands).
    residual: learn the residual, ``output = input + net(input)`` (needs in_channels == out_channels).
    noise_level_map: take ``sigma`` in ``forward`` as one extra constant input channel.
    identity_init: start as the identity map: a fresh model's output layer is zero, so a residual
        denoiser returns its input and each unfolding stage starts as its data step alone (the U-Net's
        random last layer otherwise makes the first stages worse than no denoiser; docs/denoisers.md).
        Only the initialisation: weights loaded from a checkpoint are kept.
    """

    in_channels: int = 1
    out_channels: int = 1
    residual: bool = True
    noise_level_map: bool = False
    identity_init: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(
                f"residual=True needs in_channels == out_channels, got {self.in_channels} and "
                f"{self.out_channels}; set residual=False for a channel-changing denoiser"
            )
        if self.identity_init and not self.residual:
            raise ValueError(
                "identity_init=True needs residual=True (a zero output layer of a plain net outputs 0)"
            )
        super().__post_init__(**kwargs)

    @property
    def net_in_channels(self) -> int:
        """Channels the first layer sees: the image plus the noise-level map if enabled."""
        return self.in_channels + int(self.noise_level_map)


#: Most resolution levels a U-shaped denoiser may have: 2**7 = 128x downsampling at the bottom. More would
#: pad every input to a multiple of 2**(levels - 1) and double the width per level (a typo such as
#: ``depth=32`` would otherwise try to allocate a 2**31-times-wider bottom level and hang).
MAX_LEVELS = 8


def check_levels(name: str, levels: int, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``minimum <= levels <= MAX_LEVELS``."""
    if not minimum <= levels <= MAX_LEVELS:
        raise ValueError(f"{name} must be between {minimum} and {MAX_LEVELS} resolution levels, got {levels}")


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right so H and W are multiples of ``multiple``.

    Reflect padding where the image is large enough for it (pad < side), replicate otherwise.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _call_with_adapters(module: nn.Module, active: tuple, *args: Tensor) -> Tensor:
    """``module(*args)`` with the adapter layers set to ``active`` ((layer, adapters, disabled) triples)."""
    previous = [(layer, layer._active_adapter, layer._disable_adapters) for layer, _, _ in active]
    try:
        for layer, adapters, disabled in active:
            layer._active_adapter, layer._disable_adapters = adapters, disabled
        return module(*args)
    finally:
        for layer, adapters, disabled in previous:
            layer._active_adapter, layer._disable_adapters = adapters, disabled


class DenoiserPreTrainedModel(PreTrainedModel):
    """Base class of all denoisers: ``forward(pixel_values, sigma=None) -> (B, out_channels, H, W)``.

    Subclasses build their layers in ``__init__`` (then call ``self.post_init()``), implement
    :meth:`body` on the padded input and set :attr:`size_multiple`.
    """

    config_class = DenoiserConfig
    base_model_prefix = "denoiser"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def __init__(self, config: DenoiserConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.gradient_checkpointing = False  # set by activation_checkpointing_enable where supported

    def checkpointed(self, module: nn.Module, *args: Tensor) -> Tensor:
        """``module(*args)``, recomputed in the backward pass while this denoiser checkpoints (training).

        Families with ``supports_gradient_checkpointing = True`` route each level of :meth:`body`
        through it, so ``activation_checkpointing_enable()`` keeps one level's activations at a time.
        """
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The recompute runs in the backward pass, after any ``stage(model, k)`` block has exited:
            # it must see the adapters that were active in the forward, so they are an argument.
            active = tuple(
                (layer, layer._active_adapter, layer._disable_adapters)
                for layer in module.modules()
                if hasattr(layer, "_active_adapter")
            )
            return self._gradient_checkpointing_func(_call_with_adapters, module, active, *args)
        return module(*args)

    @property
    def size_multiple(self) -> int:
        """H and W are padded to a multiple of this before :meth:`body` (2**number of downsamplings)."""
        return 1

    def body(self, x: Tensor) -> Tensor:
        """The network on the padded input: (B, net_in_channels, H', W') -> (B, out_channels, H', W')."""
        raise NotImplementedError

    @property
    def output_layer(self) -> nn.Module:
        """The last layer of :meth:`body` (a conv), zeroed at init when ``config.identity_init``."""
        raise NotImplementedError(f"{type(self).__name__} does not name its output layer")

    def _init_weights(self, module: nn.Module) -> None:
        """Keep PyTorch's default initialisation (kaiming-uniform convs/linears, unit norms).

        transformers' default would redraw every conv/linear from N(0, 0.02). ``reset_parameters`` runs
        under transformers' init guard, so weights already loaded from a checkpoint are left alone; the
        zero output layer of ``identity_init`` goes through ``nn.init`` under the same guard.
        """
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if getattr(self.config, "identity_init", False) and module is self.output_layer:
            for parameter in (module.weight, module.bias):
                if parameter is not None:
                    nn.init.zeros_(parameter)

    def forward(self, pixel_values: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """Denoise ``pixel_values`` ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.

        ``sigma`` (float, 0-d or ``(B,)`` tensor) is the noise level; it is required when the config has
        ``noise_level_map=True`` and rejected otherwise. Any H, W: the input is padded to
        :attr:`size_multiple` and the output cropped back.
        """
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1] != cfg.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects pixel_values of shape (B, {cfg.in_channels}, H, W), "
                f"got {tuple(pixel_values.shape)}"
            )
        x = pixel_values
        if cfg.noise_level_map:
            x = torch.cat([x, self.noise_map(sigma, x)], dim=1)
        elif sigma is not None:
            raise ValueError(
                f"{type(self).__name__} was built with noise_level_map=False and takes no sigma; "
                "build it with noise_level_map=True to condition on the noise level"
            )
        h, w = x.shape[-2:]
        out = self.body(pad_to_multiple(x, self.size_multiple))[..., :h, :w]
        return pixel_values + out if cfg.residual else out

    @staticmethod
    def noise_map(sigma: float | Tensor | None, x: Tensor) -> Tensor:
        """The constant noise-level channel ``(B, 1, H, W)`` for ``x`` ``(B, C, H, W)``."""
        if sigma is None:
            raise ValueError("this denoiser has noise_level_map=True: pass sigma (float, 0-d or (B,) tensor)")
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        elif sigma.shape != (batch,):
            raise ValueError(
                f"sigma must be a float, a 0-d tensor or a ({batch},) tensor for a batch of {batch}, "
                f"got shape {tuple(sigma.shape)}"
            )
        return sigma.view(batch, 1, 1, 1).expand(batch, 1, *x.shape[-2:])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` that raises instead of silently re-initialising weights.

        transformers only warns about missing/unexpected keys (and re-initialises mismatched ones when
        ``ignore_mismatched_sizes``); a denoiser with random layers would give silently wrong results, so
        any missing, unexpected or mismatched key raises a ValueError listing them.
        """
        want_info = kwargs.pop("output_loading_info", False)
        # Let transformers report mismatched shapes by key (instead of its generic error); they raise below.
        kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        raise_on_loading_problems(
            info, pretrained_model_name_or_path, f"{cls.__name__} ({model.config.model_type})"
        )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained`` with atomic files.

        Writes into a temporary folder inside ``save_directory``, then moves each file into place with
        ``os.replace``, so a crash never leaves a half-written ``model.safetensors`` or ``config.json``.
        """
        if kwargs.get("push_to_hub"):
            super().save_pretrained(save_directory, **kwargs)
            return
        save_atomically(
            save_directory, lambda tmp: super(DenoiserPreTrainedModel, self).save_pretrained(tmp, **kwargs)
        )


def denoiser_from_config(config_dict: dict[str, Any]) -> DenoiserPreTrainedModel:
    """Rebuild a fresh denoiser of any family from ``config.to_dict()`` (weights are not restored)."""
    kwargs = dict(config_dict)
    model_type = kwargs.pop("model_type", None)
    if model_type is None:
        raise ValueError("config_dict has no 'model_type'; expected the output of config.to_dict()")
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except ValueError as err:
        raise ValueError(f"unknown denoiser model_type {model_type!r}: {err}") from err
    model = AutoModel.from_config(config)
    if not isinstance(model, DenoiserPreTrainedModel):
        raise ValueError(f"model_type {model_type!r} is not a lorun_peft denoiser ({type(model).__name__})")
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared tensors counted once); only trainable ones if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

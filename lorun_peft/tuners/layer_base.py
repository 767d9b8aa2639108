"""StageLoRALayer: the part every StageLoRA layer shares (adapters, merge/unmerge, the forward by merge mode).

It is a PEFT ``LoraLayer`` (per-adapter ``lora_A``/``lora_B`` ModuleDicts, ``r``, ``lora_alpha``,
``scaling``, ``update_layer``, ``merge``/``unmerge``, ``get_delta_weight``), so PEFT's injection, state
dict helpers and ``PeftModel`` treat the layers as its own tuner layers. What differs is the forward,
chosen by ``merge_mode``:

* ``"in_forward"`` (default): ``W = W0 + dW_k`` is formed and ONE conv/linear runs, so the
  activations cost what the base layer costs (the paper's "no extra inference latency").
* ``"materialized"``: ``W0 + dW_k`` is cached per adapter (K copies, Block-K memory) and reused while
  autograd does not need it; the cache is keyed on the tensors' version counters, so an optimiser
  step or a state-dict load invalidates it.
* ``"unmerged"``: PEFT's path, ``base(x) + lora(x) * scaling`` (an extra branch of activations).

Only what depends on the wrapped layer type (factor shapes, composing ``dW``, the base op) is left to
the subclasses of :mod:`lorun_peft.tuners.layers`; keeping that apart keeps this adapter and merge
logic in one place for all of them. Which adapter is active is decided elsewhere
(:mod:`lorun_peft.tuners.stage` writes ``_active_adapter``); these layers never change
``requires_grad`` of other adapters.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

MERGE_MODES = ("in_forward", "materialized", "unmerged")


class StageLoRALayer(nn.Module, LoraLayer):
    """Common part of the StageLoRA layers; subclasses define the factor shapes and the base op.

    Args:
        base_layer: the module to adapt (Conv2d / ConvTranspose2d / Linear, groups=1).
        adapter_name: name of the first adapter.
        config: a :class:`~lorun_peft.tuners.config.StageLoRAConfig` (layout, init, inference_mode).
        r, lora_alpha: rank and alpha of this layer (PEFT passes them from rank_pattern / alpha_pattern).
    """

    base_type: type[nn.Module] = nn.Module

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        r: int = 0,
        lora_alpha: int = 1,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_layer, BaseTunerLayer):
            raise TypeError(f"StageLoRA cannot wrap another PEFT tuner layer ({type(base_layer).__name__})")
        if not isinstance(base_layer, self.base_type):
            raise TypeError(
                f"{type(self).__name__} wraps {self.base_type.__name__}, got {type(base_layer).__name__}"
            )
        if getattr(base_layer, "groups", 1) != 1:
            raise ValueError(
                f"StageLoRA supports only groups=1 convolutions, got groups={base_layer.groups} in "
                f"{base_layer!r}; exclude grouped/depthwise convs from target_modules"
            )
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        self.merge_mode = "in_forward"
        self.conv_layout: dict[str, str] = {}
        self._materialized: dict[str, tuple[tuple, Tensor]] = {}
        self._original_weight: Tensor | None = None
        self._active_adapter = adapter_name  # PEFT's convention for a freshly built layer
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    # ----- shapes and the base op (per layer type) -----
    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        if isinstance(module, nn.Linear):
            return module.in_features, module.out_features
        return module.in_channels, module.out_channels

    @staticmethod
    def make_factors(base: nn.Module, r: int, layout: str) -> tuple[nn.Module, nn.Module]:
        """The ``(lora_A, lora_B)`` modules of one adapter of rank ``r`` on ``base``."""
        raise NotImplementedError

    def _compose(self, weight_a: Tensor, weight_b: Tensor, layout: str) -> Tensor:
        """``dW`` (unscaled) in the base weight's shape from the two factor weights."""
        raise NotImplementedError

    def _base_op(self, x: Tensor, weight: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The base layer's computation with ``weight`` in place of its own weight."""
        raise NotImplementedError

    def _lora_branch(self, x: Tensor, adapter: str, *args: Any, **kwargs: Any) -> Tensor:
        """``lora(x) * scaling`` for the unmerged path."""
        raise NotImplementedError

    # ----- PEFT layer API -----
    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: Any, **kwargs: Any) -> None:
        """Create adapter ``adapter_name`` (PEFT's injection calls this for every new adapter)."""
        layout = getattr(config, "conv_layout", None)
        if layout is None:
            raise TypeError(
                "StageLoRA layers need a StageLoRAConfig (with conv_layout), got a plain LoRA config"
            )
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"rank r must be a positive int, got {r!r}")
        if adapter_name in self.lora_A:
            raise ValueError(f"adapter {adapter_name!r} already exists in this layer")
        lora_a, lora_b = self.make_factors(self.base_layer, r, layout)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.lora_dropout[adapter_name] = nn.Identity()
        self.lora_A[adapter_name] = lora_a
        self.lora_B[adapter_name] = lora_b
        self.use_rslora[adapter_name] = False
        self.use_dora[adapter_name] = False
        self.lora_bias[adapter_name] = False
        self.conv_layout[adapter_name] = layout
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        trainable = not config.inference_mode
        lora_a.requires_grad_(trainable)
        lora_b.requires_grad_(trainable)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """Paper init: one factor random, the output-side ``lora_B`` zero, so ``dW = 0`` at start."""
        if init_lora_weights is False:
            return
        weight_a = self.lora_A[adapter_name].weight
        if init_lora_weights is True:
            nn.init.kaiming_uniform_(weight_a, a=math.sqrt(5))
        elif init_lora_weights == "gaussian":
            nn.init.normal_(weight_a, std=1 / self.r[adapter_name])
        else:
            raise ValueError(
                f"init_lora_weights must be True, False or 'gaussian', got {init_lora_weights!r}"
            )
        nn.init.zeros_(self.lora_B[adapter_name].weight)

    def get_delta_weight(self, adapter: str) -> Tensor:
        """``dW`` of ``adapter`` (scaled), in the base weight's shape and dtype."""
        weight_a = self.lora_A[adapter].weight
        weight_b = self.lora_B[adapter].weight
        delta = self._compose(weight_a, weight_b, self.conv_layout[adapter])
        scaling = self.scaling[adapter]
        return delta if scaling == 1 else delta * scaling

    def merged_weight(self, adapter: str) -> Tensor:
        """``W0 + dW`` of ``adapter``, differentiable (the in-forward merge), in ``W0``'s memory layout."""
        weight = self.base_layer.weight
        return _in_layout_of(weight, weight + self.get_delta_weight(adapter))

    def _fused_merged_weight(self, adapter: str) -> Tensor:
        """``W0 + dW`` as one ``addmm`` on the 2-D views (eq. 4 is a reshape of ``B @ A``)."""
        weight = self.base_layer.weight
        weight_a, weight_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        if not (weight.is_contiguous() and weight.dtype == weight_a.dtype == weight_b.dtype):
            return _in_layout_of(weight, weight + self.get_delta_weight(adapter))
        flat = weight.view(weight_b.shape[0], weight_a.shape[1])
        merged = torch.addmm(flat, weight_b, weight_a, alpha=self.scaling[adapter]).view(weight.shape)
        return _in_layout_of(weight, merged)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name``; unlike PEFT's version it never flips ``requires_grad`` of the others."""
        for attr in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        self.conv_layout.pop(adapter_name, None)
        self.lora_variant.pop(adapter_name, None)
        self._materialized.pop(adapter_name, None)
        active = self._active_adapter
        if active == adapter_name:
            self._active_adapter = []
        elif not isinstance(active, str) and adapter_name in active:
            self._active_adapter = [a for a in active if a != adapter_name]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write ``W0 + sum(dW)`` into the base weight; a copy of ``W0`` is kept for a bit-exact unmerge."""
        if adapter_names is None:
            adapter_names = [a for a in self.active_adapters if a in self.lora_A]
        adapter_names = [a for a in adapter_names if a not in self.merged_adapters]
        unknown = [a for a in adapter_names if a not in self.lora_A]
        if unknown:
            raise ValueError(
                f"cannot merge unknown adapter(s) {unknown}; this layer has {sorted(self.lora_A)}"
            )
        if not adapter_names:
            return
        weight = self.base_layer.weight
        with torch.no_grad():
            merged = weight.detach().clone()
            for adapter in adapter_names:
                merged += self.get_delta_weight(adapter).to(merged.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"non-finite values in the merged weight of adapter(s) {adapter_names}")
            if self._original_weight is None:
                self._original_weight = weight.detach().clone()
            weight.copy_(merged)
        self._materialized.clear()
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Restore the exact base weight saved by :meth:`merge` (a copy, not a subtraction: bit-exact)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        with torch.no_grad():
            self.base_layer.weight.copy_(self._original_weight)
        self._original_weight = None
        self._materialized.clear()
        self.merged_adapters.clear()

    @property
    def original_weight(self) -> Tensor:
        """The base weight ``W0`` (the saved copy while an adapter is merged into the layer)."""
        return self._original_weight if self._original_weight is not None else self.base_layer.weight

    # ----- materialised weights -----
    def clear_materialized(self) -> None:
        """Drop the cached ``W0 + dW`` copies."""
        self._materialized.clear()

    def _cache_key(self, adapter: str) -> tuple:
        tensors = (self.base_layer.weight, self.lora_A[adapter].weight, self.lora_B[adapter].weight)
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors) + (
            self.scaling[adapter],
        )

    def materialize(self, adapter: str) -> Tensor:
        """``W0 + dW`` of ``adapter`` without autograd history, cached until any of the tensors changes."""
        key = self._cache_key(adapter)
        entry = self._materialized.get(adapter)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                weight = self.merged_weight(adapter)
            entry = (key, weight)
            self._materialized[adapter] = entry
        return entry[1]

    def _needs_grad(self, adapter: str) -> bool:
        if not torch.is_grad_enabled():
            return False
        tensors = (self.base_layer.weight, self.lora_A[adapter].weight, self.lora_B[adapter].weight)
        return any(t.requires_grad for t in tensors)

    # ----- forward -----
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if kwargs and kwargs.pop("adapter_names", None) is not None:
            raise ValueError("StageLoRA layers do not support mixed-batch adapter_names; use stage(model, k)")
        base_layer = self.base_layer
        if self._disable_adapters:
            if self.merged:
                self.unmerge()
            return base_layer(x, *args, **kwargs)
        active = self._active_adapter
        if self.merged_adapters or not active:
            return base_layer(x, *args, **kwargs)
        lora_a = self.lora_A
        active = [a for a in ([active] if isinstance(active, str) else active) if a in lora_a]
        if not active:
            return base_layer(x, *args, **kwargs)
        mode = self.merge_mode
        if mode == "unmerged":
            result = base_layer(x, *args, **kwargs)
            for adapter in active:
                result = result + self._lora_branch(x, adapter, *args, **kwargs)
            return result
        if len(active) == 1:
            adapter = active[0]
            if mode == "materialized" and not self._needs_grad(adapter):
                weight = self.materialize(adapter)
            else:
                weight = self.merged_weight(adapter)
        else:
            weight = base_layer.weight
            for adapter in active:
                weight = weight + self.get_delta_weight(adapter)
        return self._base_op(x, weight, *args, **kwargs)

    def __repr__(self) -> str:
        return "stage_lora." + super().__repr__()


def _in_layout_of(base: Tensor, merged: Tensor) -> Tensor:
    """``merged`` with exactly ``base``'s strides (differentiably copied when they differ).

    A ``channels_last`` base weight plus a contiguous ``dW`` can come out in the other layout (always
    for 1x1 kernels, whose two layouts both count as contiguous), and a conv whose weight and input
    layouts differ converts its input on every call: LoRun-9 ran 1.3x slower than Block-9 in bf16
    channels_last before this (benchmarks/bench_training_speed.py --forward).
    """
    if merged.stride() == base.stride():
        return merged
    out = torch.empty_like(base, dtype=merged.dtype)
    out.copy_(merged)
    return out

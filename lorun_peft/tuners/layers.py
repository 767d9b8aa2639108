"""StageLoRA layers: PEFT ``LoraLayer`` subclasses for Conv2d, ConvTranspose2d and Linear.

Each subclass of :class:`~lorun_peft.tuners.layer_base.StageLoRALayer` (which holds the adapters,
merge/unmerge and the forward for each ``merge_mode``) defines only what depends on the wrapped layer:
the factor shapes, how ``dW`` is composed from them and the base op run with a merged weight.
:data:`STAGE_LORA_LAYERS` is the mapping PEFT's custom-module hook uses, :func:`factor_shapes` the
shapes a layer would create. ``StageLoRALayer`` and ``MERGE_MODES`` are importable from here too.

Conv layouts (``config.conv_layout``, stored per adapter): ``"paper"`` (eq. 4, loralib ConvLoRA)
keeps ``lora_A.weight`` of shape (r*kh, Cin*kw) and ``lora_B.weight`` of shape (Cout*kh, r*kh) and forms
``dW = (lora_B.weight @ lora_A.weight).view(Cout, Cin, kh, kw)`` (for ConvTranspose2d, whose weight is
(Cin, Cout, kh, kw), that view is transposed to (Cin, Cout, kh, kw)); ``"peft"`` is PEFT's two-conv form,
``lora_A = Conv(Cin, r, k, stride, padding, dilation)`` and ``lora_B = Conv(r, Cout, 1)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer_base import MERGE_MODES as MERGE_MODES
from .layer_base import StageLoRALayer


def _paper_factors(c_in: int, c_out: int, kh: int, kw: int, r: int) -> tuple[nn.Module, nn.Module]:
    """Eq. 4 factors as weight holders: lora_A.weight (r*kh, Cin*kw), lora_B.weight (Cout*kh, r*kh)."""
    return nn.Linear(c_in * kw, r * kh, bias=False), nn.Linear(r * kh, c_out * kh, bias=False)


class StageLoRAConv2d(StageLoRALayer):
    """StageLoRA around ``nn.Conv2d`` (any stride / padding / dilation / padding_mode, groups=1)."""

    base_type = nn.Conv2d

    @staticmethod
    def make_factors(base: nn.Module, r: int, layout: str) -> tuple[nn.Module, nn.Module]:
        kh, kw = base.kernel_size
        if layout == "paper":
            return _paper_factors(base.in_channels, base.out_channels, kh, kw, r)
        lora_a = nn.Conv2d(
            base.in_channels,
            r,
            base.kernel_size,
            base.stride,
            base.padding,
            base.dilation,
            bias=False,
            padding_mode=base.padding_mode,
        )
        return lora_a, nn.Conv2d(r, base.out_channels, 1, bias=False)

    def _compose(self, weight_a: Tensor, weight_b: Tensor, layout: str) -> Tensor:
        base = self.base_layer
        shape = (base.out_channels, base.in_channels, *base.kernel_size)
        if layout == "paper":
            return (weight_b @ weight_a).view(shape)
        return (weight_b.flatten(1) @ weight_a.flatten(1)).view(shape)

    def merged_weight(self, adapter: str) -> Tensor:
        if self.conv_layout[adapter] == "paper":
            return self._fused_merged_weight(adapter)
        return super().merged_weight(adapter)

    def _base_op(self, x: Tensor, weight: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        base = self.base_layer
        return base._conv_forward(x, weight, base.bias)

    def _lora_branch(self, x: Tensor, adapter: str, *args: Any, **kwargs: Any) -> Tensor:
        if self.conv_layout[adapter] == "peft":
            out = self.lora_B[adapter](self.lora_A[adapter](x))
            scaling = self.scaling[adapter]
            return out if scaling == 1 else out * scaling
        return self.base_layer._conv_forward(x, self.get_delta_weight(adapter), None)


class StageLoRAConvTranspose2d(StageLoRALayer):
    """StageLoRA around ``nn.ConvTranspose2d`` (stride, padding, output_padding, dilation; groups=1).

    The base weight is (Cin, Cout, kh, kw). PEFT layout: ``lora_A = ConvTranspose2d(Cin, r, k, stride,
    padding, output_padding, dilation)``, ``lora_B = ConvTranspose2d(r, Cout, 1)``.
    """

    base_type = nn.ConvTranspose2d

    @staticmethod
    def make_factors(base: nn.Module, r: int, layout: str) -> tuple[nn.Module, nn.Module]:
        kh, kw = base.kernel_size
        if layout == "paper":
            return _paper_factors(base.in_channels, base.out_channels, kh, kw, r)
        lora_a = nn.ConvTranspose2d(
            base.in_channels,
            r,
            base.kernel_size,
            base.stride,
            base.padding,
            base.output_padding,
            bias=False,
            dilation=base.dilation,
        )
        return lora_a, nn.ConvTranspose2d(r, base.out_channels, 1, bias=False)

    def _compose(self, weight_a: Tensor, weight_b: Tensor, layout: str) -> Tensor:
        base = self.base_layer
        if layout == "paper":
            return (
                (weight_b @ weight_a)
                .view(base.out_channels, base.in_channels, *base.kernel_size)
                .transpose(0, 1)
            )
        return torch.einsum("ijab,jo->ioab", weight_a, weight_b[:, :, 0, 0])

    def _base_op(self, x: Tensor, weight: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self._conv_transpose(x, weight, self.base_layer.bias, *args, **kwargs)

    def _conv_transpose(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, output_size: Any = None
    ) -> Tensor:
        base = self.base_layer
        output_padding = base._output_padding(
            x, output_size, base.stride, base.padding, base.kernel_size, 2, base.dilation
        )
        return F.conv_transpose2d(
            x, weight, bias, base.stride, base.padding, output_padding, 1, base.dilation
        )

    def _lora_branch(self, x: Tensor, adapter: str, *args: Any, **kwargs: Any) -> Tensor:
        if self.conv_layout[adapter] == "peft":
            out = self.lora_B[adapter](self.lora_A[adapter](x, *args, **kwargs))
            scaling = self.scaling[adapter]
            return out if scaling == 1 else out * scaling
        return self._conv_transpose(x, self.get_delta_weight(adapter), None, *args, **kwargs)


class StageLoRALinear(StageLoRALayer):
    """StageLoRA around ``nn.Linear``: ``lora_A = Linear(in, r)``, ``lora_B = Linear(r, out)``."""

    base_type = nn.Linear

    @staticmethod
    def make_factors(base: nn.Module, r: int, layout: str) -> tuple[nn.Module, nn.Module]:
        return nn.Linear(base.in_features, r, bias=False), nn.Linear(r, base.out_features, bias=False)

    def _compose(self, weight_a: Tensor, weight_b: Tensor, layout: str) -> Tensor:
        return weight_b @ weight_a

    def merged_weight(self, adapter: str) -> Tensor:
        return self._fused_merged_weight(adapter)

    def _base_op(self, x: Tensor, weight: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return F.linear(x, weight, self.base_layer.bias)

    def _lora_branch(self, x: Tensor, adapter: str, *args: Any, **kwargs: Any) -> Tensor:
        out = self.lora_B[adapter](self.lora_A[adapter](x))
        scaling = self.scaling[adapter]
        return out if scaling == 1 else out * scaling


#: PEFT custom-module mapping (base type -> StageLoRA layer), registered by ``StageLoRAConfig``.
STAGE_LORA_LAYERS: dict[type[nn.Module], type[StageLoRALayer]] = {
    nn.Conv2d: StageLoRAConv2d,
    nn.ConvTranspose2d: StageLoRAConvTranspose2d,
    nn.Linear: StageLoRALinear,
}


def factor_shapes(base_layer: nn.Module, r: int, layout: str) -> dict[str, tuple[int, ...]]:
    """Shapes of ``lora_A.weight`` / ``lora_B.weight`` a StageLoRA layer creates (via the meta device)."""
    layer_cls = next((cls for typ, cls in STAGE_LORA_LAYERS.items() if isinstance(base_layer, typ)), None)
    if layer_cls is None:
        raise TypeError(f"no StageLoRA layer for {type(base_layer).__name__}")
    with torch.device("meta"):
        lora_a, lora_b = layer_cls.make_factors(base_layer, r, layout)
    return {"lora_A.weight": tuple(lora_a.weight.shape), "lora_B.weight": tuple(lora_b.weight.shape)}

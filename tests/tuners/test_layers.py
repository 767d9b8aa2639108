"""StageLoRA layers: exact init, equality with a plain model holding W0 + dW_k, merge modes, merge/unmerge."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lorun_peft.tuners import (
    MERGE_MODES,
    StageLoRAConfig,
    add_stage_adapters,
    merge,
    set_merge_mode,
    stage,
    unmerge,
)
from lorun_peft.tuners.layers import StageLoRAConv2d, StageLoRALayer

K = 3


def reference_delta(layer: StageLoRALayer, adapter: str) -> torch.Tensor:
    """dW written out independently of the layer code, from the documented layouts."""
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    base = layer.get_base_layer()
    layout = layer.conv_layout[adapter]
    if isinstance(base, nn.Linear):
        return b @ a
    c_out, c_in, (kh, kw) = base.out_channels, base.in_channels, base.kernel_size
    if isinstance(base, nn.Conv2d):
        if layout == "paper":
            return (b @ a).reshape(c_out, c_in, kh, kw)
        return torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
    if layout == "paper":  # ConvTranspose2d, weight (Cin, Cout, kh, kw)
        return (b @ a).reshape(c_out, c_in, kh, kw).permute(1, 0, 2, 3)
    return torch.einsum("irkl,ro->iokl", a, b[:, :, 0, 0])


def plain_copy(clean: nn.Module, adapted: nn.Module, adapter: str) -> nn.Module:
    """A plain copy of the denoiser whose adapted weights are W0 + dW (no LoRA anywhere)."""
    ref = copy.deepcopy(clean)
    with torch.no_grad():
        for name, module in adapted.named_modules():
            if isinstance(module, StageLoRALayer) and adapter in module.lora_A:
                ref.get_submodule(name).weight += reference_delta(module, adapter) * module.scaling[adapter]
    return ref


@pytest.mark.parametrize("layout", ["paper", "peft"])
@pytest.mark.parametrize("mode", MERGE_MODES)
def test_init_is_exactly_the_base_model(tiny, layout, mode):
    clean = tiny()
    model = copy.deepcopy(clean)
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=K, conv_layout=layout))
    set_merge_mode(model, mode)
    x = torch.randn(2, 3, 8, 8)
    for k in range(K):
        with stage(model, k):
            # dW = 0 at init, but the adapted copy may get other oneDNN kernels: equal up to rounding.
            torch.testing.assert_close(model(x), clean(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["paper", "peft"])
def test_stage_equals_plain_model_with_merged_weights(tiny, train, layout):
    dtype = torch.float64
    clean = tiny(dtype=dtype)
    model = copy.deepcopy(clean)
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=K, conv_layout=layout))
    train(model, K, dtype=dtype)
    kinds = {type(m).__name__ for m in model.modules() if isinstance(m, StageLoRALayer)}
    assert kinds == {"StageLoRAConv2d", "StageLoRAConvTranspose2d", "StageLoRALinear"}
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    outputs = {}
    for mode in MERGE_MODES:
        set_merge_mode(model, mode)
        with torch.no_grad():
            for k in range(K):
                adapter = f"s/stage_{k:02d}"
                expected = plain_copy(clean, model, adapter)(x)
                with stage(model, k):
                    outputs[mode, k] = model(x)
                torch.testing.assert_close(outputs[mode, k], expected, rtol=1e-10, atol=1e-10)
                assert not torch.allclose(expected, clean(x))  # the adapters did change the model
    assert not torch.allclose(outputs["in_forward", 0], outputs["in_forward", 1])  # stages differ


def test_float32_equivalence_and_grads_in_every_mode(tiny, train):
    clean = tiny()
    model = copy.deepcopy(clean)
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=2, conv_layout="paper"))
    train(model, 2)
    x = torch.randn(1, 3, 8, 8)
    expected = plain_copy(clean, model, "s/stage_01")(x)
    for mode in MERGE_MODES:
        set_merge_mode(model, mode)
        model.zero_grad()
        with stage(model, 1):
            y = model(x)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        y.sum().backward()  # training works in every mode (materialized falls back to in-forward)
        assert model.up.lora_B["s/stage_01"].weight.grad.abs().sum() > 0


def test_materialized_cache_is_built_reused_and_invalidated(tiny, train):
    model = tiny()
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=K))
    train(model, K)
    set_merge_mode(model, "materialized")
    layer = model.c1
    assert set(layer._materialized) == {f"s/stage_{k:02d}" for k in range(K)}  # K copies, built eagerly
    cached = layer._materialized["s/stage_00"][1]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), stage(model, 0):
        model(x)
    assert layer._materialized["s/stage_00"][1] is cached  # reused, not recomputed
    train(model, K, steps=1)  # the optimiser changes lora_B in place
    with torch.no_grad(), stage(model, 0):
        y = model(x)
    assert layer._materialized["s/stage_00"][1] is not cached
    set_merge_mode(model, "in_forward")
    assert not layer._materialized  # dropped on mode switch
    with torch.no_grad(), stage(model, 0):
        torch.testing.assert_close(model(x), y)


def test_merge_unmerge_restores_bit_exact_weights(tiny, train):
    clean = tiny()
    model = copy.deepcopy(clean)
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=K))
    train(model, K)
    before = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with stage(model, 2):
            staged = model(x)
        merge(model, "s/stage_02")
        assert not torch.equal(model.c1.base_layer.weight, before["c1.base_layer.weight"])
        torch.testing.assert_close(model(x), staged, rtol=1e-5, atol=1e-5)  # merged = stage 2
        with pytest.raises(ValueError, match="unmerge"), stage(model, 0):
            pass
        unmerge(model)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), name


def test_grouped_conv_layer_is_a_clear_error():
    config = StageLoRAConfig(num_stages=1, conv_layout="paper")
    with pytest.raises(ValueError, match="groups=1"):
        StageLoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), "a", config, r=1, lora_alpha=1)


def test_mixed_batch_adapter_names_rejected(tiny):
    model = tiny()
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=1))
    with pytest.raises(ValueError, match="adapter_names"):
        model.c1(torch.randn(1, 3, 4, 4), adapter_names=["s/stage_00"])


@pytest.mark.parametrize("layout", ["paper", "peft"])
def test_merged_weights_keep_the_base_weights_memory_layout(layout):
    """channels_last bases (3x3, 1x1 and single-input-channel convs) get merged weights with their strides,
    so a conv never has to convert its input between layouts (which cost LoRun 1.3x in bf16)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 1, 1))
    model = model.to(memory_format=torch.channels_last)
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=2, gamma=50, conv_layout=layout))
    layers = [m for m in model.modules() if isinstance(m, StageLoRALayer)]
    for layer in layers:
        with torch.no_grad():
            for p in layer.lora_B.parameters():
                p.normal_()
        adapter = next(iter(layer.lora_A))
        base = layer.base_layer.weight
        assert layer.merged_weight(adapter).stride() == base.stride()
        assert layer.materialize(adapter).stride() == base.stride()
        torch.testing.assert_close(layer.merged_weight(adapter), base + layer.get_delta_weight(adapter))

"""Stage control: one backward through a 9-stage loop trains all 9 adapters, never the base."""

from __future__ import annotations

import pytest
import torch

from lorun_peft.tuners import StageLoRAConfig, add_stage_adapters, stage
from lorun_peft.tuners.layers import StageLoRALayer

K = 9


def _factors(model, factor):
    return {
        (name, adapter): getattr(layer, factor)[adapter].weight
        for name, layer in model.named_modules()
        if isinstance(layer, StageLoRALayer)
        for adapter in layer.lora_A
    }


def _loop_loss(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    for k in range(K):
        with stage(model, k):
            x = model(x)
    return x.pow(2).mean()


@pytest.mark.parametrize("layout", ["paper", "peft"])
def test_one_backward_reaches_all_nine_stages_and_no_base_weight(tiny, layout):
    model = tiny()
    names = add_stage_adapters(model, "s", StageLoRAConfig(num_stages=K, conv_layout=layout))
    assert names == [f"s/stage_{k:02d}" for k in range(K)]
    base = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    assert base and all(not p.requires_grad for _, p in base)
    assert all(w.requires_grad for w in _factors(model, "lora_A").values())
    assert all(w.requires_grad for w in _factors(model, "lora_B").values())

    # Step 0: lora_B = 0, so dL/dB = (dL/dW) A^T != 0 but dL/dA = B^T (dL/dW) = 0 exactly.
    _loop_loss(model).backward()
    lora_b, lora_a = _factors(model, "lora_B"), _factors(model, "lora_A")
    assert {a for _, a in lora_b} == set(names)
    for key, w in lora_b.items():
        assert w.grad is not None and w.grad.abs().sum() > 0, key
    for key, w in lora_a.items():
        assert w.grad is not None and torch.count_nonzero(w.grad) == 0, key
    assert all(p.grad is None for _, p in base)

    # After one optimiser step B != 0, and a second backward reaches every A as well.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    opt.zero_grad()
    _loop_loss(model, seed=1).backward()
    for key, w in {**lora_a, **lora_b}.items():
        assert w.grad is not None and w.grad.abs().sum() > 0, key
    assert all(p.grad is None for _, p in base)


def test_stage_changes_no_requires_grad_and_restores_activation(tiny):
    model = tiny()
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=3))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert model.c1.active_adapters == []  # outside stage(): base behaviour
    with stage(model, 1) as adapter:
        assert adapter == "s/stage_01"
        assert all(
            m.active_adapters == ["s/stage_01"] for m in model.modules() if isinstance(m, StageLoRALayer)
        )
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        with stage(model, 2):
            assert model.lin.active_adapters == ["s/stage_02"]
        assert model.lin.active_adapters == ["s/stage_01"]
    assert model.c1.active_adapters == []
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_stage_errors(tiny):
    model = tiny()
    with pytest.raises(ValueError, match="no StageLoRA adapters"), stage(model, 0):
        pass
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=3))
    with pytest.raises(IndexError, match="K=3"), stage(model, 3):
        pass
    with pytest.raises(ValueError, match="not resident"), stage(model, 0, set_name="other"):
        pass


def test_stage_through_an_outer_module(tiny):
    denoiser = tiny()
    add_stage_adapters(denoiser, "s", StageLoRAConfig(num_stages=2))
    outer = torch.nn.ModuleDict({"denoiser": denoiser})
    with stage(outer, 1):
        assert denoiser.c1.active_adapters == ["s/stage_01"]

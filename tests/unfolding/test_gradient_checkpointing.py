"""Gradient checkpointing recomputes every stage with its own adapter: gradients equal the plain ones."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from unfolding_helpers import make_model

from lorun_peft.denoisers import TransformerConfig, TransformerDenoiser
from lorun_peft.physics import BlockCS
from lorun_peft.tuners import StageLoRAConfig, set_merge_mode
from lorun_peft.unfolding import LoRunModel

TASKS = ("cs", "cassi", "sr2")
CASES = [
    (mode, merge)
    for mode in ("block", "shared", "lorun")
    for merge in (("in_forward", "materialized", "unmerged") if mode == "lorun" else (None,))
]


def _build(task: str, algorithm: str, mode: str, merge: str | None, noise_level_map: bool = True):
    model, images, _ = make_model(
        task, algorithm, "block" if mode == "block" else "shared", 3, noise_level_map
    )
    if mode == "lorun":
        model.add_stage_adapters("set", StageLoRAConfig(num_stages=3, gamma=50))
        with torch.no_grad():  # non-zero adapters, so every stage computes something of its own
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.05, generator=torch.Generator().manual_seed(hash(name) % 2**31))
        set_merge_mode(model.denoisers[0], merge)
    return model.train(), images


def _gradients(model, images, checkpointing: bool, denoiser: bool = False) -> dict[str, torch.Tensor]:
    if checkpointing:
        model.gradient_checkpointing_enable(denoiser=denoiser)
    else:
        model.gradient_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    measurement = model.physics.measure(images)  # a learned Phi gets gradients from sampling too
    model(measurement, labels=images).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _assert_same(plain: dict, recomputed: dict) -> None:
    assert plain.keys() == recomputed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ["pgd", "hqs", "gap"])
@pytest.mark.parametrize("mode, merge", CASES)
def test_checkpointed_gradients_equal_plain_ones(task, algorithm, mode, merge):
    model, images = _build(task, algorithm, mode, merge)
    plain = _gradients(model, images, checkpointing=False)
    _assert_same(plain, _gradients(model, images, checkpointing=True))
    _assert_same(plain, _gradients(model, images, checkpointing=True, denoiser=True))
    if mode == "lorun":  # all K adapters got gradients of their own
        lora = [g for n, g in plain.items() if "lora_A" in n and "encoders.0.0" in n]
        assert len(lora) == 3 and not torch.allclose(lora[0], lora[1])


def test_recompute_uses_each_stages_own_adapter():
    """Stage k's recompute must run adapter k: a wrong adapter would change stage k's LoRA gradients."""
    model, images = _build("cs", "pgd", "lorun", "in_forward")
    plain = _gradients(model, images, checkpointing=False)
    seen: list[list[str]] = []
    layer = next(m for n, m in model.named_modules() if n.endswith("head"))
    hook = layer.register_forward_pre_hook(lambda module, args: seen.append(list(module._active_adapter)))
    try:
        recomputed = _gradients(model, images, checkpointing=True)
    finally:
        hook.remove()
    names = [f"set/stage_{k:02d}" for k in range(3)]
    assert seen[:3] == [[n] for n in names]  # forward
    assert sorted(map(tuple, seen[3:])) == sorted((n,) for n in names)  # one recompute per stage
    _assert_same(plain, recomputed)


def test_checkpointing_with_ddp_and_gradient_accumulation(tmp_path):
    """A DDP-wrapped model (gloo, one rank) with two accumulated micro-batches, no_sync on the first."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grads = []
        for checkpointing in (False, True):
            model, images = _build("cs", "pgd", "lorun", "in_forward")
            if checkpointing:
                model.gradient_checkpointing_enable()
            wrapped = DistributedDataParallel(model)
            for micro, chunk in enumerate(images.split(1)):
                context = wrapped.no_sync() if micro == 0 else torch.enable_grad()
                with context:
                    measurement = model.physics.measure(chunk)
                    (wrapped(measurement, labels=chunk).loss / 2).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        _assert_same(*grads)
    finally:
        dist.destroy_process_group()


def test_checkpointing_saves_memory_only_in_training():
    """Eval / no-grad forwards never recompute; enable/disable round-trips the flags."""
    model, images = _build("cs", "pgd", "shared", None)
    model.gradient_checkpointing_enable(denoiser=True)
    assert model.is_activation_checkpointing and model.checkpoints_denoiser
    calls = []
    original = model._gradient_checkpointing_func
    model._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or original(*a, **k)
    with torch.no_grad():
        model(model.physics.measure(images))
    model.eval()
    model(model.physics.measure(images))
    assert calls == []
    model.train()
    model(model.physics.measure(images))
    assert len(calls) == 3
    model.gradient_checkpointing_disable()
    assert not model.is_activation_checkpointing and not model.checkpoints_denoiser


def test_bad_checkpointing_requests_are_refused():
    denoiser = TransformerDenoiser(
        TransformerConfig(in_channels=1, out_channels=1, hidden_channels=8, num_blocks=1)
    )
    model = LoRunModel.from_components(BlockCS(0.25, block_size=8), denoiser, num_stages=2)
    with pytest.raises(ValueError, match="cannot checkpoint inside the denoiser"):
        model.gradient_checkpointing_enable(denoiser=True)
    assert not model.gradient_checkpointing
    model.gradient_checkpointing_enable()  # stage checkpointing works with every denoiser
    assert model.gradient_checkpointing
    with pytest.raises(ValueError, match="use_reentrant=True is not supported"):
        model.gradient_checkpointing_enable({"use_reentrant": True})

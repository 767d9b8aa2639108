"""``lambda_k`` trains only when it is used: with a denoiser noise-level map, frozen without one.

``lambda_k`` reaches the output only through ``sigma_k``. Without a noise-level map a trainable
``lambda_k`` would never get a gradient, which DDP rejects; the model keeps it frozen on every
construction path and for every adapter set's task parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModel
from unfolding_helpers import make_model

from lorun_peft.tuners import StageLoRAConfig
from lorun_peft.unfolding import LoRunModel


def _trainable_without_grad(model: LoRunModel, measurement: torch.Tensor, images: torch.Tensor) -> list[str]:
    """Names of the parameters with ``requires_grad`` that one forward + backward leaves without a grad."""
    model.zero_grad(set_to_none=True)
    model(measurement, labels=images).loss.backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def _lambdas(model: LoRunModel) -> list[torch.nn.Parameter]:
    return [model.task.steps.raw_lambda, *(task.steps.raw_lambda for task in model.adapter_tasks.values())]


def _models_from_every_construction_path(noise_level_map: bool, tmp_path):
    shared, images, measurement = make_model("cs", "pgd", "shared", noise_level_map=noise_level_map)
    block, _, _ = make_model("cs", "hqs", "block", noise_level_map=noise_level_map)
    shared.save_pretrained(tmp_path / "backbone")
    return (
        {
            "from_components/shared": shared,
            "from_components/block": block,
            "__init__": LoRunModel(shared.config),
            "from_pretrained": LoRunModel.from_pretrained(tmp_path / "backbone").train(),
            "AutoModel.from_pretrained": AutoModel.from_pretrained(tmp_path / "backbone").train(),
            "block_from_shared": LoRunModel.block_from_shared(shared),
        },
        images,
        measurement,
    )


def test_without_a_noise_map_lambda_is_frozen_and_every_trainable_parameter_gets_a_gradient(tmp_path):
    models, images, measurement = _models_from_every_construction_path(False, tmp_path)
    for path, model in models.items():
        assert not model.uses_noise_level, path
        assert not model.task.steps.raw_lambda.requires_grad, path
        steps = model.task.steps
        assert getattr(steps, f"raw_{steps.step_name}").requires_grad, path
        assert _trainable_without_grad(model, measurement, images) == [], path


def test_with_a_noise_map_lambda_trains_on_every_construction_path(tmp_path):
    models, images, measurement = _models_from_every_construction_path(True, tmp_path)
    for path, model in models.items():
        assert model.uses_noise_level, path
        assert model.task.steps.raw_lambda.requires_grad, path
        assert _trainable_without_grad(model, measurement, images) == [], path
        grad = model.task.steps.raw_lambda.grad
        assert grad is not None and grad.abs().sum() > 0, path


@pytest.mark.parametrize("noise_level_map", [False, True])
def test_adapter_sets_lambda_follows_the_noise_map_when_added_or_loaded_trainable(noise_level_map, tmp_path):
    model, images, measurement = make_model("cs", "pgd", "shared", noise_level_map=noise_level_map)
    model.add_stage_adapters("added", StageLoRAConfig(num_stages=3, gamma=2))
    assert model.adapter_tasks["added"].steps.raw_lambda.requires_grad == noise_level_map
    assert model.adapter_tasks["added"].steps.raw_rho.requires_grad
    assert _trainable_without_grad(model, measurement, images) == []
    model.save_adapter_set(tmp_path / "sets", "added")

    backbone = make_model("cs", "pgd", "shared", noise_level_map=noise_level_map)[0]
    backbone.save_pretrained(tmp_path / "backbone")
    loaded = LoRunModel.from_pretrained(tmp_path / "backbone").train()
    loaded.load_adapter(tmp_path / "sets", "added", trainable=True)
    set_steps = loaded.adapter_tasks["added"].steps
    assert set_steps.raw_lambda.requires_grad == noise_level_map and set_steps.raw_rho.requires_grad
    assert _trainable_without_grad(loaded, measurement, images) == []
    if noise_level_map:
        assert set_steps.raw_lambda.grad is not None and set_steps.raw_lambda.grad.abs().sum() > 0


def test_requires_grad_true_on_the_model_keeps_an_unused_lambda_frozen():
    model, images, measurement = make_model("cs", "pgd", "shared", noise_level_map=False)
    model.add_stage_adapters("a", StageLoRAConfig(num_stages=3, gamma=2))
    assert model.requires_grad_(True) is model
    assert not any(lam.requires_grad for lam in _lambdas(model))
    model.delete_adapter_set("a")  # back to a frozen shared backbone; the docs say requires_grad_(True)
    model.requires_grad_(True)
    assert not model.task.steps.raw_lambda.requires_grad
    assert _trainable_without_grad(model, measurement, images) == []

    with_map, _, _ = make_model("cs", "pgd", "shared", noise_level_map=True)
    with_map.requires_grad_(False)
    assert not with_map.task.steps.raw_lambda.requires_grad
    with_map.requires_grad_(True)
    assert with_map.task.steps.raw_lambda.requires_grad


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is needed"
)
def test_ddp_trains_a_model_without_noise_map_over_several_iterations(tmp_path):
    """The failure the freeze prevents: DDP raises on the 2nd step when a trainable parameter is unused."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    model, images, measurement = make_model("cs", "pgd", "shared", noise_level_map=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        for _ in range(2):
            ddp(measurement, labels=images).loss.backward()
    finally:
        dist.destroy_process_group()
    assert model.task.steps.raw_rho.grad is not None

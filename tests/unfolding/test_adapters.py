"""LoRun mode: stage adapter sets with their own task parameters, switching, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from unfolding_helpers import TASKS, make_model

from lorun_peft.physics import BlockCS
from lorun_peft.tuners import StageLoRAConfig, get_merge_mode, merge, set_merge_mode, unmerge
from lorun_peft.unfolding import LoRunModel


def lora_config(num_stages: int = 3) -> StageLoRAConfig:
    return StageLoRAConfig(num_stages=num_stages, gamma=50)


def randomize_set(model: LoRunModel, name: str, seed: int) -> None:
    """Give set ``name`` non-trivial adapters and task parameters (as training would)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if f"{name}/stage_" in key or key.startswith(f"adapter_tasks.{name}."):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def lora_mode_model(task="cs", algorithm="pgd", name="ratio-25", seed=0):
    model, images, measurement = make_model(task, algorithm, "shared", noise_level_map=True, seed=seed)
    model.add_stage_adapters(name, lora_config())
    return model, images, measurement


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ["pgd", "hqs"])
def test_lorun_mode_builds_for_every_task_and_starts_at_the_shared_output(task, algorithm):
    model, images, measurement = make_model(task, algorithm, "shared", noise_level_map=True)
    with torch.no_grad():
        shared = model(measurement).images
    names = model.add_stage_adapters("set", lora_config())
    assert names == [f"set/stage_{k:02d}" for k in range(3)]
    assert model.mode == "lorun" and model.config.mode == "shared" and model.active_adapter_set == "set"
    out = model(measurement, return_stages=True)
    assert out.images.shape == images.shape and len(out.stages) == 3
    # dW = 0 at initialisation and the set's task parameters are a copy of the phase-1 ones.
    torch.testing.assert_close(out.images, shared)


def test_lorun_gradients_reach_every_stage_adapter_and_set_task_but_not_the_backbone():
    model, images, measurement = lora_mode_model(seed=1)
    randomize_set(model, "ratio-25", seed=1)
    model(measurement, labels=images).loss.backward()
    denoiser = model.denoisers[0]
    for k in range(3):
        grads = [p.grad for n, p in denoiser.named_parameters() if f"ratio-25/stage_{k:02d}" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), f"stage {k}"
    base = [
        (n, p) for n, p in model.named_parameters() if "lora_" not in n and not n.startswith("adapter_tasks.")
    ]
    assert base and all(p.grad is None and not p.requires_grad for _, p in base)
    set_task = model.adapter_tasks["ratio-25"]
    for param in (set_task.physics.Phi, set_task.steps.raw_rho, set_task.steps.raw_lambda):
        assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0
    assert model.physics is set_task.physics and model.steps is set_task.steps


def test_saved_set_reloads_onto_the_saved_backbone_with_identical_outputs(tmp_path):
    model, _, measurement = lora_mode_model(task="cs", algorithm="hqs")
    randomize_set(model, "ratio-25", seed=2)
    model.save_pretrained(tmp_path / "backbone")
    folder = model.save_adapter_set(tmp_path / "adapters")
    assert folder == tmp_path / "adapters" / "ratio-25"
    info = json.loads((folder / "adapter_set.json").read_text())
    assert info["metadata"]["physics"] == model.physics.get_config()
    assert set(load_file(folder / "task.safetensors")) == {"physics.Phi", "steps.raw_mu", "steps.raw_lambda"}

    fresh = LoRunModel.from_pretrained(tmp_path / "backbone")
    assert fresh.mode == "shared"
    assert fresh.load_adapter(tmp_path / "adapters", "ratio-25") == "ratio-25"
    assert fresh.mode == "lorun" and fresh.list_adapter_sets() == ["ratio-25"]
    model.eval()
    # Two instances may get different oneDNN kernels, so their outputs agree only to rounding.
    with torch.no_grad():
        torch.testing.assert_close(fresh(measurement).images, model(measurement).images, rtol=1e-5, atol=1e-5)
    # Loaded sets are frozen unless asked otherwise; the set folder itself is accepted too.
    assert not any(p.requires_grad for p in fresh.parameters())
    other = LoRunModel.from_pretrained(tmp_path / "backbone")
    other.load_adapter(folder, trainable=True)
    assert all(p.requires_grad for p in other.adapter_tasks.parameters())


def test_two_resident_sets_switch_adapters_and_task_parameters_together(tmp_path):
    model, images, y25 = lora_mode_model(name="ratio-25")
    randomize_set(model, "ratio-25", seed=3)
    with torch.no_grad():
        out25 = model(y25).images
    physics50 = BlockCS(0.5, block_size=8)
    model.add_stage_adapters("ratio-50", lora_config(), physics=physics50)
    assert model.active_adapter_set == "ratio-50" and model.physics is model.adapter_tasks["ratio-50"].physics
    randomize_set(model, "ratio-50", seed=4)
    y50 = model.physics.measure(images).detach()
    assert y50.shape[1] == 32 and y25.shape[1] == 16
    with torch.no_grad():
        out50 = model(y50).images
        # Outputs computed twice (after switching, or by another instance) agree only to rounding.
        model.set_adapter_set("ratio-25")
        assert model.physics.Phi.shape == (16, 64)
        torch.testing.assert_close(model(y25).images, out25, rtol=1e-5, atol=1e-5)
        model.set_adapter_set("ratio-50")
        assert model.physics.Phi.shape == (32, 64)
        torch.testing.assert_close(model(y50).images, out50, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected \\(B, 32, h, w\\)"):
        model.restore(y25)

    model.save_adapter_set(tmp_path / "sets", "ratio-25")
    model.save_adapter_set(tmp_path / "sets", "ratio-50")
    model.save_pretrained(tmp_path / "backbone")
    fresh = LoRunModel.from_pretrained(tmp_path / "backbone")
    fresh.load_adapter(tmp_path / "sets", "ratio-50")
    fresh.load_adapter(tmp_path / "sets", "ratio-25")
    assert fresh.list_adapter_sets() == ["ratio-50", "ratio-25"] and fresh.active_adapter_set == "ratio-25"
    model.eval()
    torch.testing.assert_close(fresh.restore(y25), out25, rtol=1e-5, atol=1e-5)
    fresh.set_adapter_set("ratio-50")
    torch.testing.assert_close(fresh.restore(y50), out50, rtol=1e-5, atol=1e-5)


def test_saved_backbone_of_a_lorun_model_is_the_clean_phase1_model(tmp_path):
    model, _, measurement = make_model("cs", "pgd", "shared", noise_level_map=True)
    phase1 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        phase1_out = model(measurement).images
    model.add_stage_adapters("ratio-25", lora_config())
    randomize_set(model, "ratio-25", seed=5)
    assert any(".base_layer." in k for k in model.state_dict()), "PEFT wraps the targeted layers"
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(phase1)
    assert all(torch.equal(saved[k], phase1[k]) for k in phase1)
    assert json.loads((tmp_path / "config.json").read_text())["mode"] == "shared"
    # The phase-1 output computed again (adapters disabled, a loaded instance, block copies) may use
    # other oneDNN kernels, so it agrees only to rounding; the saved weights above are exact.
    with torch.no_grad(), model.disable_adapters():
        assert model.physics is model.task.physics
        torch.testing.assert_close(model(measurement).images, phase1_out, rtol=1e-5, atol=1e-5)
    assert model.physics is model.adapter_tasks["ratio-25"].physics
    loaded = LoRunModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(measurement).images, phase1_out, rtol=1e-5, atol=1e-5)
        block = LoRunModel.block_from_shared(model)
        torch.testing.assert_close(block(measurement).images, phase1_out, rtol=1e-5, atol=1e-5)

    # A stage adapter merged into the base weights: the backbone saved is still W0.
    merge(model.denoisers[0], 1)
    with pytest.raises(ValueError, match="merged"), model.disable_adapters():
        pass
    model.save_pretrained(tmp_path / "merged")
    saved = load_file(tmp_path / "merged" / "model.safetensors")
    assert all(torch.equal(saved[k], phase1[k]) for k in phase1)
    unmerge(model.denoisers[0])


def test_restore_in_lorun_mode_materializes_and_puts_the_merge_mode_back():
    model, _, measurement = lora_mode_model()
    randomize_set(model, "ratio-25", seed=6)
    with torch.no_grad():
        expected = model(measurement).images
    for previous in ("in_forward", "unmerged"):
        set_merge_mode(model.denoisers[0], previous)
        seen = []
        layer = next(m for m in model.modules() if hasattr(m, "merge_mode") and hasattr(m, "lora_A"))
        hook = layer.register_forward_pre_hook(lambda m, _a, seen=seen: seen.append(m.merge_mode))
        restored = model.restore(measurement)
        hook.remove()
        assert set(seen) == {"materialized"}
        torch.testing.assert_close(restored, expected)
        assert get_merge_mode(model.denoisers[0]) == previous and model.training


def test_load_adapter_onto_another_backbone_fails_and_leaves_the_model_unchanged(tmp_path):
    model, _, _ = lora_mode_model(seed=0)
    model.save_adapter_set(tmp_path)
    other, _, measurement = make_model("cs", "pgd", "shared", noise_level_map=True, seed=7)
    keys = set(other.state_dict())
    with torch.no_grad():
        before = other(measurement).images
    with pytest.raises(ValueError, match="another base model"):
        other.load_adapter(tmp_path, "ratio-25")
    assert other.list_adapter_sets() == [] and other.mode == "shared" and set(other.state_dict()) == keys
    assert all(p.requires_grad for p in other.parameters())
    with torch.no_grad():
        torch.testing.assert_close(other(measurement).images, before, rtol=1e-6, atol=1e-6)


def test_load_adapter_rejects_a_set_of_another_algorithm_and_rolls_back(tmp_path):
    model, _, _ = lora_mode_model(algorithm="pgd")
    model.save_adapter_set(tmp_path)
    model.delete_adapter_set("ratio-25")
    config = model.config
    config.algorithm = "hqs"
    hqs = LoRunModel(config)
    hqs.load_state_dict(
        {k.replace("raw_rho", "raw_mu"): v for k, v in model.backbone_state_dict().items()}, strict=True
    )
    with pytest.raises(ValueError, match="algorithm='pgd'"):
        hqs.load_adapter(tmp_path, "ratio-25")
    assert hqs.list_adapter_sets() == [] and not any("lora_" in k for k in hqs.state_dict())


def test_load_adapter_path_errors_are_clear(tmp_path):
    model, _, _ = lora_mode_model()
    model.save_adapter_set(tmp_path)
    fresh = make_model("cs", "pgd", "shared", noise_level_map=True)[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fresh.load_adapter(tmp_path / "nowhere", "ratio-25")
    with pytest.raises(FileNotFoundError, match="not loaded with from_pretrained"):
        fresh.load_adapter("ratio-25")
    assert fresh.list_adapter_sets(tmp_path) == ["ratio-25"] and fresh.list_adapter_sets() == []
    with pytest.raises(FileNotFoundError, match=r"adapter sets found there: \['ratio-25'\]"):
        fresh.load_adapter(tmp_path, "ratio-10")
    with pytest.raises(ValueError, match="adapter set 'ratio-25' already exists"):
        model.add_stage_adapters("ratio-25", lora_config())


def test_a_set_name_that_leaves_the_folder_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    """load_adapter(dir, "../other/set") must not read a set outside ``dir`` (then refuse on its name)."""
    import lorun_peft.tuners.adapter_set as adapter_set_module

    model, _, _ = lora_mode_model()
    model.save_adapter_set(tmp_path / "other")
    (tmp_path / "sets").mkdir()
    fresh = make_model("cs", "pgd", "shared", noise_level_map=True)[0]

    def no_reading(*args, **kwargs):
        raise AssertionError("a set file was read")

    monkeypatch.setattr(adapter_set_module, "_read_set_info", no_reading)
    for name in ("../other/ratio-25", "..", "a/b", "ratio-25/../../x"):
        with pytest.raises(ValueError, match="invalid adapter set name"):
            fresh.load_adapter(tmp_path / "sets", name)
    assert fresh.list_adapter_sets() == []


def test_adapter_set_argument_checks():
    block, _, _ = make_model("cs", "pgd", "block")
    with pytest.raises(ValueError, match="shared backbone"):
        block.add_stage_adapters("set", lora_config())
    model, _, _ = make_model("cs")
    with pytest.raises(ValueError, match="num_stages=5"):
        model.add_stage_adapters("set", lora_config(5))
    with pytest.raises(ValueError, match="invalid adapter set name"):
        model.add_stage_adapters("ratio.25", lora_config())
    with pytest.raises(ValueError, match="no adapter set 'nope'"):
        model.set_adapter_set("nope")
    with pytest.raises(ValueError, match="no adapter set to save"):
        model.save_adapter_set("unused")


def test_delete_adapter_set_switches_to_a_remaining_set_and_finally_back_to_shared():
    model, _, measurement = lora_mode_model(name="a")
    model.add_stage_adapters("b", lora_config())
    assert model.active_adapter_set == "b"
    model.delete_adapter_set("b")
    assert model.list_adapter_sets() == ["a"] and model.active_adapter_set == "a"
    model.delete_adapter_set("a")
    assert model.mode == "shared" and model.active_adapter_set is None
    assert not any("lora_" in k or "base_layer" in k or "adapter_tasks" in k for k in model.state_dict())
    model(measurement)


def test_parameter_report_separates_base_adapters_and_task_parameters():
    model, _, _ = make_model("cs", "pgd", "shared", noise_level_map=True)
    denoiser_size = sum(p.numel() for p in model.denoisers.parameters())
    task_size = sum(p.numel() for p in model.task.parameters())
    report = model.parameter_report()
    assert report.base.stored == report.base.trainable == denoiser_size
    assert report.adapters.stored == 0 and report.task.stored == task_size
    model.add_stage_adapters("ratio-25", lora_config())
    report = model.parameter_report()
    adapter_size = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert report.base.stored == denoiser_size and report.base.trainable == 0
    assert report.adapters.stored == report.adapters.trainable == adapter_size > 0
    assert len(report.per_adapter) == 3
    assert report.task.stored == 2 * task_size and report.task.trainable == task_size
    assert report.total.trainable == adapter_size + task_size


def test_lorun_mode_runs_in_float64_and_new_sets_follow_the_model_dtype():
    model, images, measurement = make_model("sr2", "hqs", "shared", noise_level_map=True)
    model = model.double()
    model.add_stage_adapters("x2", lora_config())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    out = model(measurement.double(), labels=images.double())
    assert out.images.dtype == torch.float64 and torch.isfinite(out.loss)


def test_a_float32_set_loads_onto_the_same_backbone_in_float64(tmp_path):
    model, _, measurement = lora_mode_model(task="sr2", algorithm="hqs")
    randomize_set(model, "ratio-25", seed=8)
    model.save_pretrained(tmp_path / "backbone")
    model.save_adapter_set(tmp_path / "adapters")
    wide = LoRunModel.from_pretrained(tmp_path / "backbone", dtype=torch.float64)
    assert next(wide.parameters()).dtype == torch.float64 and not wide.training
    wide.load_adapter(tmp_path / "adapters", "ratio-25")
    assert all(p.dtype == torch.float64 for p in wide.parameters())
    out = wide.restore(measurement.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model.restore(measurement).double(), rtol=1e-4, atol=1e-5)

"""Adapter sets: save/load, plain-PEFT loading of stage folders, validation, atomicity, switching."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file

import lorun_peft.tuners.adapter_set as adapter_set_module
import lorun_peft.tuners.injection as injection_module
from lorun_peft.tuners import (
    StageLoRAConfig,
    active_adapter_set,
    add_stage_adapters,
    base_fingerprint,
    delete_adapter_set,
    list_adapter_sets,
    load_adapter_set,
    parameter_report,
    record_set_checksums,
    save_adapter_set,
    set_adapter_set,
    stage,
)
from lorun_peft.tuners.layers import StageLoRALayer

K = 3
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def stage_outputs(model, set_name=None):
    with torch.no_grad():
        outs = []
        for k in range(K):
            with stage(model, k, set_name):
                outs.append(model(X))
    return outs


def snapshot(model):
    """Everything a failed load must leave unchanged."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        list_adapter_sets(model),
        sorted({a for m in model.modules() if isinstance(m, StageLoRALayer) for a in m.lora_A}),
        [type(m).__name__ for m in model.modules()],
    )


def assert_same(a, b):
    assert a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1:] == b[1:]


@pytest.fixture
def trained(tiny, train, tmp_path):
    """(clean base, adapted+trained model, saved set path)."""

    def make(layout="paper", name="ratio-25", peft_native=False):
        clean = tiny(peft_native=peft_native)
        model = copy.deepcopy(clean)
        add_stage_adapters(model, name, StageLoRAConfig(num_stages=K, gamma=20, conv_layout=layout))
        train(model, K)
        task = {"rho": torch.rand(K), "phi": torch.randn(4, 16)}
        path = save_adapter_set(
            model, tmp_path / "sets", name, task_state=task, metadata={"task": "cs", "ratio": 0.25}
        )
        return clean, model, path, task

    return make


@pytest.mark.parametrize("layout", ["paper", "peft"])
def test_save_load_round_trip(trained, layout):
    clean, model, path, task = trained(layout)
    assert sorted(os.listdir(path)) == [
        "adapter_set.json",
        "stage_00",
        "stage_01",
        "stage_02",
        "task.safetensors",
    ]
    assert sorted(os.listdir(path / "stage_01")) == ["adapter_config.json", "adapter_model.safetensors"]
    info = json.loads((path / "adapter_set.json").read_text())
    assert (info["name"], info["num_stages"], info["gamma"], info["conv_layout"]) == (
        "ratio-25",
        K,
        20,
        layout,
    )
    assert info["base_fingerprint"] == base_fingerprint(clean) == base_fingerprint(model)
    keys = load_file(str(path / "stage_00" / "adapter_model.safetensors"))
    assert "base_model.model.c1.lora_A.weight" in keys and "base_model.model.up.lora_B.weight" in keys

    fresh = copy.deepcopy(clean)
    loaded = load_adapter_set(fresh, path)
    assert loaded.name == "ratio-25" and loaded.metadata == {"task": "cs", "ratio": 0.25}
    assert loaded.task_state.keys() == task.keys()
    assert all(torch.equal(loaded.task_state[k], task[k]) for k in task)
    # Another instance may get other oneDNN kernels: the weights are the same, outputs agree to rounding.
    for ours, theirs in zip(stage_outputs(model), stage_outputs(fresh)):
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert all(not p.requires_grad for p in fresh.parameters())  # loaded for inference by default


@pytest.mark.parametrize("layout", ["paper", "peft"])
def test_each_stage_folder_loads_with_plain_peft(trained, layout):
    clean, model, path, _ = trained(layout)
    ours = stage_outputs(model)
    for k in range(K):
        stage_dir = str(path / f"stage_{k:02d}")
        config = StageLoRAConfig.from_pretrained(stage_dir)  # the registration step
        peft_model = PeftModel.from_pretrained(copy.deepcopy(clean), stage_dir, config=config)
        with torch.no_grad():
            torch.testing.assert_close(peft_model(X), ours[k], rtol=1e-6, atol=1e-6)


def test_peft_layout_loads_into_peft_native_layers(trained):
    clean, model, path, _ = trained("peft", peft_native=True)  # see TinyDenoiser
    ours = stage_outputs(model)
    stage_dir = str(path / "stage_02")
    with pytest.warns(UserWarning, match="conv_layout"):
        config = LoraConfig.from_pretrained(stage_dir)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(clean), stage_dir, config=config)
    assert not any(isinstance(m, StageLoRALayer) for m in peft_model.modules())
    assert type(peft_model.base_model.model.c1).__module__.startswith("peft.")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(X), ours[2], rtol=1e-5, atol=1e-5)


def test_wrong_fingerprint_is_rejected_untouched(trained, tiny):
    _, _, path, _ = trained()
    other = tiny(seed=123)
    before = snapshot(other)
    with pytest.raises(ValueError, match="another base model"):
        load_adapter_set(other, path)
    assert_same(before, snapshot(other))


def test_set_loads_onto_an_exactly_cast_backbone_but_not_a_changed_one(trained):
    clean, model, path, _ = trained()
    wide = copy.deepcopy(clean).double()  # float32 -> float64 is exact: same weights, same fingerprint
    assert base_fingerprint(wide) == base_fingerprint(clean)
    load_adapter_set(wide, path)
    x64 = X.double()
    for k in range(K):
        with torch.no_grad(), stage(model, k), stage(wide, k):
            torch.testing.assert_close(wide(x64), model(X).double(), rtol=1e-5, atol=1e-6)
    changed = copy.deepcopy(clean)
    with torch.no_grad():
        changed.c1.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ValueError, match="another base model"):
        load_adapter_set(changed, path)
    # sets saved with the earlier (dtype-exact) fingerprint still load
    info = json.loads((path / "adapter_set.json").read_text())
    info["base_fingerprint"] = base_fingerprint(clean, exact_dtype=True)
    (path / "adapter_set.json").write_text(json.dumps(info))
    load_adapter_set(copy.deepcopy(clean), path)


def test_wrong_k_is_rejected_untouched(trained):
    clean, _, path, _ = trained()
    target = copy.deepcopy(clean)
    with pytest.raises(ValueError, match="K=9 was expected"):
        load_adapter_set(target, path, num_stages=9)
    add_stage_adapters(target, "two", StageLoRAConfig(num_stages=2))
    before = snapshot(target)
    with pytest.raises(ValueError, match="resident sets have K"):
        load_adapter_set(target, path)
    assert_same(before, snapshot(target))


def test_missing_stage_folder_is_rejected_untouched(trained):
    clean, _, path, _ = trained()
    shutil.rmtree(path / "stage_02")
    target = copy.deepcopy(clean)
    add_stage_adapters(target, "other", StageLoRAConfig(num_stages=K))
    before = snapshot(target)
    with pytest.raises(ValueError, match="stage_02"):
        load_adapter_set(target, path)
    assert_same(before, snapshot(target))


def test_wrong_tensor_shape_is_rejected_untouched(trained):
    clean, _, path, _ = trained()
    weights_file = path / "stage_01" / "adapter_model.safetensors"
    tensors = load_file(str(weights_file))
    tensors["base_model.model.lin.lora_A.weight"] = torch.zeros(2, 16)
    save_file(tensors, str(weights_file))
    record_set_checksums(path)  # a consistent record: the shape check, not the sha256 check, must refuse it
    target = copy.deepcopy(clean)
    before = snapshot(target)
    with pytest.raises(ValueError, match=r"lin\.lora_A\.weight has shape \(2, 16\)"):
        load_adapter_set(target, path)
    assert_same(before, snapshot(target))


def test_failure_while_injecting_is_rolled_back(trained, monkeypatch):
    clean, _, path, _ = trained()
    target = copy.deepcopy(clean)
    add_stage_adapters(target, "other", StageLoRAConfig(num_stages=K))
    before = snapshot(target)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(injection_module, "_copy_weights", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_adapter_set(target, path)
    assert_same(before, snapshot(target))
    assert set(target.peft_config) == {f"other/stage_{k:02d}" for k in range(K)}


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "..", "a.b", "../x", "a b", "x:y", "s" * 300])
def test_bad_set_names_rejected(tiny, tmp_path, name):
    model = tiny()
    with pytest.raises(ValueError, match="name"):
        add_stage_adapters(model, name, StageLoRAConfig(num_stages=1))
    with pytest.raises(ValueError, match="name"):
        load_adapter_set(model, tmp_path, name)


def test_atomic_save_keeps_previous_set(trained, monkeypatch):
    _, model, path, _ = trained()
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real_save = adapter_set_module.save_file

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("no space left on device")
        return real_save(*args, **kwargs)

    with torch.no_grad():
        model.c1.lora_B["ratio-25/stage_00"].weight.add_(1.0)  # the new save would differ
    monkeypatch.setattr(adapter_set_module, "save_file", failing_save)
    with pytest.raises(OSError, match="no space"):
        save_adapter_set(model, path.parent, "ratio-25")
    assert os.listdir(path.parent) == ["ratio-25"]  # no temp folder left behind
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before

    monkeypatch.setattr(adapter_set_module, "save_file", real_save)
    save_adapter_set(model, path.parent, "ratio-25")  # replaces the old folder as a whole
    assert os.listdir(path.parent) == ["ratio-25"]
    assert (path / "stage_00" / "adapter_model.safetensors").read_bytes() != before[
        path.relative_to(path) / "stage_00" / "adapter_model.safetensors"
    ]


def test_several_resident_sets_switch_and_delete(trained, tiny, train, tmp_path):
    clean, model, path, _ = trained(name="ratio-25")
    add_stage_adapters(model, "ratio-50", StageLoRAConfig(num_stages=K, gamma=10))
    assert model.c1.lora_A["ratio-25/stage_00"].weight.requires_grad  # older set keeps its flags
    train(model, K, seed=7)  # trains the active set, ratio-25, only
    assert list_adapter_sets(model) == ["ratio-25", "ratio-50"]
    assert active_adapter_set(model) == "ratio-25"
    out_25 = stage_outputs(model)
    info = set_adapter_set(model, "ratio-50")
    assert info.name == "ratio-50" and active_adapter_set(model) == "ratio-50"
    out_50 = stage_outputs(model)
    # Outputs computed twice (another instance, or after switching sets) agree only to rounding.
    clean_out = clean(X).detach()
    for out in out_50:  # ratio-50 is untrained: dW = 0
        torch.testing.assert_close(out, clean_out, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out_25[0], out_50[0])
    for again, before in zip(stage_outputs(model, "ratio-25"), out_25):
        torch.testing.assert_close(again, before, rtol=1e-5, atol=1e-5)

    delete_adapter_set(model, "ratio-25")
    assert list_adapter_sets(model) == ["ratio-50"]
    assert not any("ratio-25" in k for k in model.state_dict())
    delete_adapter_set(model, "ratio-50")
    assert list_adapter_sets(model) == []
    assert model.state_dict().keys() == clean.state_dict().keys()  # structurally the clean base again
    assert not any(isinstance(m, StageLoRALayer) for m in model.modules())

    loaded = load_adapter_set(model, path.parent, "ratio-25")  # fingerprint still matches
    assert loaded.num_stages == K and active_adapter_set(model) == "ratio-25"


def test_parameter_report_separates_roles(trained):
    clean, model, _, task = trained()
    report = parameter_report(model, task_parameters=task)
    n_base = sum(p.numel() for p in clean.parameters())
    assert report.base.stored == n_base and report.base.trainable == 0
    per = report.per_adapter
    assert list(per) == [f"ratio-25/stage_{k:02d}" for k in range(K)]
    assert len({c.stored for c in per.values()}) == 1  # same ranks in every stage
    assert report.adapters.stored == sum(c.stored for c in per.values()) == report.adapters.trainable
    expected_stage = sum(
        m.lora_A[a].weight.numel() + m.lora_B[a].weight.numel()
        for m in model.modules()
        if isinstance(m, StageLoRALayer)
        for a in ["ratio-25/stage_00"]
    )
    assert per["ratio-25/stage_00"].stored == expected_stage
    assert report.task.stored == K + 4 * 16
    assert report.total.stored == n_base + report.adapters.stored + report.task.stored
    assert "ratio-25/stage_02" in report.format()


def test_a_300_character_set_name_is_one_clear_error(tiny, tmp_path):
    model = tiny()
    with pytest.raises(ValueError, match="300 characters long .* at most 100"):
        add_stage_adapters(model, "s" * 300, StageLoRAConfig(num_stages=1))
    add_stage_adapters(model, "s" * 100, StageLoRAConfig(num_stages=1))  # the limit itself is fine

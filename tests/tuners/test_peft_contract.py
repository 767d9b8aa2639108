"""Fails loudly if the PEFT internals lorun_peft.tuners relies on change (pyproject pins peft>=0.21,<0.22)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import peft
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer, LoraModel
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import get_peft_model_state_dict
from peft.utils.other import get_pattern_key
from torch import nn

from lorun_peft.tuners import StageLoRAConfig, add_stage_adapters
from lorun_peft.tuners.layers import StageLoRALayer

HINT = (
    f" -- PEFT internals changed (installed peft {peft.__version__}); lorun_peft.tuners relies on them. "
    "Re-check lorun_peft/tuners/{config,layers,stage,adapter_set}.py before widening the pin."
)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def test_pinned_version():
    major, minor = (int(v) for v in peft.__version__.split(".")[:2])
    assert (major, minor) == (0, 21), "lorun_peft.tuners is tested against peft 0.21.x" + HINT


def test_lora_layer_attributes():
    layer = peft.tuners.lora.Linear(nn.Linear(4, 4), "a", config=LoraConfig(r=2), r=2, lora_alpha=2)
    for attr in (
        "r",
        "lora_alpha",
        "scaling",
        "lora_A",
        "lora_B",
        "lora_dropout",
        "merged_adapters",
        "_active_adapter",
    ):
        assert hasattr(layer, attr), f"LoraLayer lost attribute {attr!r}" + HINT
    assert {"lora_A", "lora_B"} <= set(LoraLayer.adapter_layer_names), "LoraLayer.adapter_layer_names" + HINT
    assert {"r", "lora_alpha", "scaling"} <= set(LoraLayer.other_param_names), (
        "LoraLayer.other_param_names" + HINT
    )
    layer._active_adapter = ["x"]
    assert layer.active_adapters == ["x"], "active_adapters no longer reads _active_adapter" + HINT
    layer._active_adapter = []
    assert layer.active_adapters == [], "an empty _active_adapter list must mean 'no adapter'" + HINT
    assert isinstance(BaseTunerLayer.merged, property), "BaseTunerLayer.merged" + HINT


def test_custom_module_registration_and_dispatch_signature():
    config = LoraConfig(r=2, target_modules=["0"])
    assert config._custom_modules is None, "LoraConfig._custom_modules default" + HINT
    assert "_custom_modules" not in LoraConfig().to_dict(), "_custom_modules is now saved" + HINT
    source = inspect.getsource(LoraModel._create_new_module)
    assert "custom_cls(target, adapter_name, config=config, **kwargs)" in source, (
        "custom dispatch call" + HINT
    )
    source = inspect.getsource(LoraModel._create_and_replace)
    assert "target.update_layer(" in source and "target_name=current_key" in source, (
        "update_layer call" + HINT
    )
    model = _net()
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=2))
    assert isinstance(model[0], StageLoRALayer), "PEFT did not build the registered custom layer" + HINT
    assert set(model[0].lora_A) == {"s/stage_00", "s/stage_01"}, "update_layer path for a 2nd adapter" + HINT


def test_from_peft_type_is_the_loading_hook(tmp_path):
    source = inspect.getsource(peft.config.PeftConfigMixin.from_pretrained)
    assert "cls.from_peft_type(" in source, "PeftConfig.from_pretrained no longer uses from_peft_type" + HINT
    names = {f.name for f in dataclasses.fields(LoraConfig)}
    for field in ("rank_pattern", "alpha_pattern", "target_modules", "exclude_modules", "init_lora_weights"):
        assert field in names, f"LoraConfig lost field {field!r}" + HINT
    assert (
        "lora_variants" in {f.name: f for f in dataclasses.fields(LoraConfig)}["init_lora_weights"].metadata
    )


def test_pattern_and_target_matching_semantics():
    assert get_pattern_key(["conv"], "block.conv") == "conv", "rank_pattern suffix matching" + HINT
    assert get_pattern_key([r"^conv"], "block.conv") == "block.conv", "anchored rank_pattern keys" + HINT
    assert get_pattern_key([r"^block\.conv"], "block.conv") == r"^block\.conv", "escaped keys" + HINT
    config = LoraConfig(target_modules=["conv"])
    assert check_target_module_exists(config, "a.conv") and not check_target_module_exists(config, "a.xconv")
    config = LoraConfig(target_modules=r"(?:a\.conv)")
    assert check_target_module_exists(config, "a.conv") and not check_target_module_exists(
        config, "b.a.conv"
    ), "str target_modules must be a full match" + HINT
    assert re.escape("a.b") == r"a\.b"


def test_state_dict_key_format_and_adapter_names_with_slash():
    model = _net()
    config = LoraConfig(r=2, target_modules=["0", "2"])
    inject_adapter_in_model(config, model, adapter_name="set/stage_00")
    assert "0.lora_A.set/stage_00.weight" in model.state_dict(), "ModuleDict key with '/'" + HINT
    peft_model = get_peft_model(
        _net(), LoraConfig(r=2, target_modules=["0", "2"]), adapter_name="set/stage_00"
    )
    keys = set(get_peft_model_state_dict(peft_model, adapter_name="set/stage_00"))
    assert keys == {f"base_model.model.{m}.lora_{f}.weight" for m in ("0", "2") for f in "AB"}, (
        f"PEFT state-dict key format changed: {sorted(keys)}" + HINT
    )


def test_inject_sets_peft_config_and_set_adapter_still_flips_grads():
    model = _net()
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), model, adapter_name="a")
    assert set(model.peft_config) == {"a"}, "inject_adapter_in_model no longer sets model.peft_config" + HINT
    layer = model[0]
    layer.update_layer("b", 2, lora_alpha=2, config=LoraConfig(r=2))
    layer.set_adapter("b")
    # The trap stage() avoids (peft #1571): set_adapter freezes inactive adapters. If this ever stops
    # being true nothing breaks here, but the docs' rationale must be updated.
    assert not layer.lora_A["a"].weight.requires_grad, (
        "set_adapter no longer freezes inactive adapters" + HINT
    )


def test_peft_model_from_pretrained_accepts_config(tmp_path):
    params = inspect.signature(PeftModel.from_pretrained).parameters
    assert "config" in params and "is_trainable" in params, "PeftModel.from_pretrained signature" + HINT


@pytest.mark.parametrize("name", ["_output_padding", "_conv_forward"])
def test_torch_conv_helpers(name):
    owner = nn.ConvTranspose2d if name == "_output_padding" else nn.Conv2d
    assert hasattr(owner, name), f"torch {owner.__name__}.{name} is gone; StageLoRA layers call it"

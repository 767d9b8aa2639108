"""StageLoRAConfig: eq. 12 ranks, target resolution, validation and the JSON round trip."""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig, PeftConfig
from torch import nn

from lorun_peft.tuners import StageLoRAConfig, add_stage_adapters, stage_rank
from lorun_peft.tuners.layers import STAGE_LORA_LAYERS, StageLoRALayer


@pytest.mark.parametrize("gamma", [10, 20, 80])
def test_ranks_follow_eq12(tiny, tiny_dims, gamma):
    model = tiny()
    config = StageLoRAConfig(num_stages=2, gamma=gamma)
    ranks = config.resolve_ranks(model)
    expected = {name: -(-min(dims) * gamma // 100) for name, dims in tiny_dims.items()}  # integer ceil
    assert ranks == expected
    add_stage_adapters(model, "s", config)
    for name, rank in expected.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, StageLoRALayer)
        assert layer.r == {"s/stage_00": rank, "s/stage_01": rank}
        assert layer.scaling["s/stage_00"] == 1.0  # lora_alpha = r


def test_stage_rank_is_exact_and_validated():
    assert stage_rank(70, 200, 10) == 7  # 70 * 0.1 is 7.000000000000001 in floats
    assert stage_rank(64, 64, 12.5) == 8
    assert stage_rank(3, 20, 10) == 1
    with pytest.raises(ValueError, match="gamma"):
        stage_rank(3, 4, 0)


def test_default_targets_skip_depthwise_and_mha():
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3)
            self.dw = nn.Conv2d(8, 8, 3, groups=8)
            self.mha = nn.MultiheadAttention(8, 2)
            self.proj = nn.Linear(8, 8)

    config = StageLoRAConfig(num_stages=1)
    assert set(config.resolve_ranks(WithMHA())) == {"conv", "proj"}


def test_explicit_depthwise_target_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="groups=20"):
        StageLoRAConfig(num_stages=1, target_modules=["dw"]).resolve_ranks(tiny())


def test_exact_names_when_suffixes_collide():
    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)
            self.block = nn.Module()
            self.block.conv = nn.Conv2d(8, 16, 3, groups=8)  # not adaptable: must not be targeted
            self.head = nn.Module()
            self.head.conv = nn.Conv2d(8, 40, 1)

    model = Nested()
    config = StageLoRAConfig(num_stages=1, gamma=50)
    assert config.resolve_ranks(model) == {"conv": 4, "head.conv": 4}
    add_stage_adapters(model, "s", config)
    assert isinstance(model.conv, StageLoRALayer) and isinstance(model.head.conv, StageLoRALayer)
    assert not isinstance(model.block.conv, StageLoRALayer)


def test_round_trip_as_itself(tmp_path, tiny):
    config = StageLoRAConfig(num_stages=4, gamma=20, conv_layout="peft")
    config.resolve_ranks(tiny())
    config.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["num_stages"] == 4 and saved["conv_layout"] == "peft" and saved["peft_type"] == "LORA"
    loaded = StageLoRAConfig.from_pretrained(str(tmp_path))
    assert type(loaded) is StageLoRAConfig
    assert (loaded.num_stages, loaded.gamma, loaded.conv_layout) == (4, 20, "peft")
    assert loaded.rank_pattern == config.rank_pattern and loaded.alpha_pattern == config.alpha_pattern
    assert loaded._custom_modules == STAGE_LORA_LAYERS  # re-registered, PEFT does not save it
    # generic PEFT loading gives a plain LoraConfig: that is why the registration step exists
    with pytest.warns(UserWarning, match="conv_layout"):
        assert type(PeftConfig.from_pretrained(str(tmp_path))) is LoraConfig


def test_plain_lora_config_is_not_taken_for_stage_lora(tmp_path):
    LoraConfig(r=4, target_modules=["x"]).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="not a StageLoRA adapter config"):
        StageLoRAConfig.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_stages": 0}, "num_stages"),
        ({"gamma": 0}, "gamma"),
        ({"gamma": 101}, "gamma"),
        ({"conv_layout": "loralib"}, "conv_layout"),
        ({"lora_dropout": 0.1}, "lora_dropout"),
        ({"use_dora": True}, "use_dora"),
        ({"use_rslora": True}, "use_rslora"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
        ({"modules_to_save": ["x"]}, "modules_to_save"),
    ],
)
def test_invalid_options_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StageLoRAConfig(**kwargs)


def test_config_not_mutated_by_add_stage_adapters(tiny):
    config = StageLoRAConfig(num_stages=2)
    add_stage_adapters(tiny(), "s", config)
    assert config.target_modules is None and config.rank_pattern == {}


def test_saved_target_modules_are_sorted(tmp_path) -> None:
    """PEFT keeps target_modules as a set; saved unsorted, adapter_config.json changed with the hash seed."""
    names = ["head", "encoders.0.2", "decoders.1.0", "encoders.0.0", "upsamplers.0.1"]
    config = StageLoRAConfig(num_stages=2, gamma=50, target_modules=names)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["target_modules"] == sorted(names)
    assert PeftConfig.from_pretrained(tmp_path).target_modules == set(names)

"""UnfoldingTrainingConfig: validation messages, HfArgumentParser round trip, schedule helper."""

from __future__ import annotations

import json
import math

import pytest
from transformers import HfArgumentParser

from lorun_peft.training import UnfoldingTrainingConfig, cosine_lr_lambda


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_steps": 0}, "max_steps must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be an integer >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"learning_rate": "1e-3"}, "learning_rate must be a finite number > 0"),
        ({"step_lr_multiplier": 0.0}, "step_lr_multiplier must be a finite number > 0"),
        ({"step_lr_multiplier": float("nan")}, "step_lr_multiplier must be a finite number > 0"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0"),
        ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\)"),
        ({"noise_sigma": -0.1}, "noise_sigma must be a number >= 0"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\]"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be None, 0"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"warmup_steps": 10, "max_steps": 10}, r"warmup_steps \(10\) must be smaller than max_steps \(10\)"),
        ({"save_total_limit": 0}, "save_total_limit must be an integer >= 1"),
        ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0"),
        ({"output_dir": ""}, "output_dir must be a non-empty path"),
        ({"resume_from_checkpoint": ""}, "resume_from_checkpoint must be None, 'latest'"),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnfoldingTrainingConfig(**kwargs)


def test_hf_argument_parser_round_trip():
    parser = HfArgumentParser(UnfoldingTrainingConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--max_steps",
            "7",
            "--max_grad_norm",
            "0.5",
            "--mixed_precision",
            "bf16",
            "--show_progress",
            "false",
        ]
    )
    assert (config.max_steps, config.max_grad_norm, config.mixed_precision) == (7, 0.5, "bf16")
    assert config.show_progress is False
    assert json.loads(config.to_json_string())["max_steps"] == 7
    assert "Peak Adam learning rate" in parser.format_help()


def test_clipping_off_for_none_or_zero():
    assert UnfoldingTrainingConfig(max_grad_norm=None).clip_grad_norm is None
    assert UnfoldingTrainingConfig(max_grad_norm=0.0).clip_grad_norm is None
    assert UnfoldingTrainingConfig(max_grad_norm=2.0).clip_grad_norm == 2.0


def test_cosine_schedule_with_warmup():
    assert cosine_lr_lambda(0, 100, warmup_steps=4) == pytest.approx(0.25)
    assert cosine_lr_lambda(3, 100, warmup_steps=4) == pytest.approx(1.0)
    assert cosine_lr_lambda(4, 100, warmup_steps=4) == pytest.approx(1.0)
    assert cosine_lr_lambda(52, 100, warmup_steps=4) == pytest.approx(0.5)
    assert cosine_lr_lambda(100, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    values = [cosine_lr_lambda(t, 50, 0, 0.0) for t in range(50)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[0] == 1.0 and math.isclose(values[25], 0.5)

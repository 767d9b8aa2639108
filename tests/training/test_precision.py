"""Precision and layout of training: 'auto' resolution, bf16 with fp32 weights and physics, channels_last."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from lorun_peft.denoisers import UNetConfig, UNetDenoiser
from lorun_peft.physics import BlockCS
from lorun_peft.training import UnfoldingTrainingConfig, precision, train
from lorun_peft.training.precision import resolve_mixed_precision, set_channels_last
from lorun_peft.unfolding import LoRunModel

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)


def test_auto_picks_bf16_only_where_the_cpu_computes_it(monkeypatch, caplog):
    _native_bf16(monkeypatch, True)
    assert resolve_mixed_precision("auto", CPU) == "bf16"
    assert resolve_mixed_precision("bf16", CPU) == "bf16"
    _native_bf16(monkeypatch, False)
    with caplog.at_level(logging.WARNING, logger="lorun_peft.training.precision"):
        assert resolve_mixed_precision("auto", CPU) == "no"
    assert "no native bf16" in caplog.text and "training in fp32" in caplog.text
    assert resolve_mixed_precision("no", CPU) == "no"


def test_explicit_requests_the_device_cannot_serve_are_refused(monkeypatch):
    _native_bf16(monkeypatch, False)
    with pytest.raises(ValueError, match="needs native bf16.*AVX512-BF16 nor AMX"):
        resolve_mixed_precision("bf16", CPU)
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU"):
        resolve_mixed_precision("fp16", CPU)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        resolve_mixed_precision("fp8", CPU)


def test_cpu_supports_bf16_reports_a_bool():
    assert isinstance(precision.cpu_supports_bf16(), bool)


def _model(ratio: float = 0.25) -> LoRunModel:
    torch.manual_seed(0)
    physics = BlockCS(ratio, block_size=8)
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))
    return LoRunModel.from_components(physics, denoiser, num_stages=3, mode="shared")


def _images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(16, 1, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    return list(images)


def _config(tmp_path, **overrides) -> UnfoldingTrainingConfig:
    values = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "show_progress": False,
        "log_every": 1,
        "seed": 3,
        "use_cpu": True,
    }
    values.update(overrides)
    return UnfoldingTrainingConfig(**values)


def test_bf16_training_keeps_fp32_weights_adam_state_and_physics(tmp_path, monkeypatch):
    _native_bf16(monkeypatch, True)  # emulated here: slow, but exact about what runs in which precision
    model = _model()
    seen: dict[str, set[torch.dtype]] = {"physics": set(), "denoiser": set()}
    step = model.physics.gradient_step

    def recording_step(x, y, s):
        out = step(x, y, s)
        seen["physics"].add(out.dtype)
        return out

    monkeypatch.setattr(model.physics, "gradient_step", recording_step)
    conv = next(m for m in model.denoisers[0].modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda m, i, o: seen["denoiser"].add(o.dtype))
    result = train(model, _images(), _config(tmp_path, mixed_precision="auto", checkpoint_every=4))
    hook.remove()
    assert result.mixed_precision == "bf16"
    assert seen["denoiser"] == {torch.bfloat16}, "autocast must cover the denoiser"
    assert seen["physics"] == {torch.float32}, "the data steps must run in fp32"
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    state = load_file(tmp_path / "run" / "checkpoint-4" / "optimizer.safetensors")
    moments = [v for k, v in state.items() if k.endswith(("exp_avg", "exp_avg_sq"))]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.log_history)


def test_data_step_runs_in_fp32_inside_bf16_autocast():
    model = _model()
    x = torch.rand(2, 1, 16, 16)
    y = model.physics.measure(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.task.data_step(0, x.to(torch.bfloat16).to(memory_format=torch.channels_last), y)
        x0 = model.task.initial_estimate(y)
    assert z.dtype == torch.float32 and z.is_contiguous() and x0.dtype == torch.float32
    torch.testing.assert_close(z, model.task.data_step(0, x.to(torch.bfloat16).float(), y))


def test_train_twice_in_one_process_with_another_precision(tmp_path, monkeypatch):
    _native_bf16(monkeypatch, True)
    assert (
        train(_model(), _images(), _config(tmp_path / "a", mixed_precision="bf16")).mixed_precision == "bf16"
    )
    assert train(_model(), _images(), _config(tmp_path / "b")).mixed_precision == "no"


def test_channels_last_training_matches_contiguous_and_saves_the_default_layout(tmp_path):
    layouts: list[bool] = []
    model = _model()
    conv = next(m for m in model.denoisers[0].modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_pre_hook(
        lambda m, args: layouts.append(m.weight.is_contiguous(memory_format=torch.channels_last))
    )
    channels_last = train(model, _images(), _config(tmp_path / "cl", channels_last=True)).model
    hook.remove()
    assert layouts and all(layouts), "the denoiser must train in channels_last"
    assert all(p.is_contiguous() for p in channels_last.parameters()), "weights return to the default layout"
    contiguous = train(_model(), _images(), _config(tmp_path / "c")).model
    for (name, a), (_, b) in zip(channels_last.state_dict().items(), contiguous.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_set_channels_last_needs_a_denoiser():
    assert set_channels_last(_model()) == 1
    with pytest.raises(ValueError, match="has none; set channels_last=False"):
        set_channels_last(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"channels_last": "yes"}, "channels_last must be True or False"),
        ({"gradient_checkpointing_denoiser": True}, "needs gradient_checkpointing=True"),
        ({"mixed_precision": "int8"}, "mixed_precision must be one of"),
    ],
)
def test_bad_precision_settings_raise(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_bf16_on_a_cpu_without_it_is_refused_before_training(tmp_path, monkeypatch):
    _native_bf16(monkeypatch, False)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs native bf16"):
        train(model, _images(), _config(tmp_path, mixed_precision="bf16"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_checkpointing_needs_a_model_that_can_recompute(tmp_path):
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.physics = BlockCS(0.25, block_size=8)
            self.layer = torch.nn.Conv2d(1, 1, 3, padding=1)

    with pytest.raises(ValueError, match="needs a model that recomputes its stages"):
        train(Plain(), _images(), _config(tmp_path, gradient_checkpointing=True))

"""LoRunModel.restore: the checked, gradient-free user entry point."""

from __future__ import annotations

import pytest
import torch
from unfolding_helpers import make_model, smooth_images


@pytest.mark.parametrize("task", ["cs", "cassi", "sr2"])
def test_restore_single_and_batched_match_forward(task):
    model, images, measurement = make_model(task, "hqs" if task == "cassi" else "pgd")
    model.train()
    expected = model.eval()(measurement).images.detach()
    model.train()
    batch = model.restore(measurement)
    assert batch.shape == images.shape and not batch.requires_grad
    torch.testing.assert_close(batch, expected)
    single = model.restore(measurement[1])
    assert single.shape == images.shape[1:]
    torch.testing.assert_close(single, expected[1])
    assert model.training, "restore must put the previous train/eval mode back"
    model.eval()
    model.restore(measurement)
    assert not model.training


def test_restore_returns_the_measurement_dtype_and_crops_to_image_size():
    model, _, measurement = make_model("cs")
    out = model.restore(measurement.double())
    assert out.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    assert model.restore(measurement, image_size=(12, 12)).shape == (2, 1, 12, 12)


def test_restore_of_unaligned_cs_returns_the_padded_grid_or_crops_to_a_consistent_image_size():
    model, _, _ = make_model("cs")  # 8x8 blocks
    images = smooth_images(2, 1, 24)[..., :19, :21]
    y = model.task.physics.measure(images)
    assert model.restore(y).shape == (2, 1, 24, 24)  # the padded grid: y does not record (19, 21)
    batch = model.restore(y, image_size=(19, 21))
    single = model.restore(y[1], image_size=(19, 21))
    assert batch.shape == (2, 1, 19, 21) and single.shape == (1, 19, 21)
    torch.testing.assert_close(single, batch[1])
    torch.testing.assert_close(batch, model.restore(y)[..., :19, :21])
    with pytest.raises(ValueError, match="does not match the measurement"):
        model.restore(y, image_size=(9, 21))  # would silently crop away a whole block row
    sr, _, y_sr = make_model("sr2")
    with pytest.raises(ValueError, match="does not match the measurement"):
        sr.restore(y_sr, image_size=(14, 16))


def test_restore_rejects_a_wrong_shape_with_the_expected_layout():
    model, _, measurement = make_model("cs")
    with pytest.raises(ValueError, match=r"expected \(B, 16, h, w\)"):
        model.restore(measurement[:, :5])
    with pytest.raises(ValueError, match="fits neither a batch nor a single"):
        model.restore(measurement[None, None])


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_restore_rejects_non_floating_dtypes(dtype):
    model, _, measurement = make_model("cs")
    with pytest.raises(TypeError, match="floating-point"):
        model.restore(measurement.to(dtype))


def test_restore_rejects_non_tensors():
    model, _, measurement = make_model("cs")
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.restore(measurement.numpy())


@pytest.mark.parametrize(
    "value, name", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")]
)
def test_restore_rejects_non_finite_values_and_says_where(value, name):
    model, _, measurement = make_model("cs")
    bad = measurement.clone()
    bad[1, 3, 0, 1] = value
    with pytest.raises(ValueError, match=rf"1 {name} value\(s\), the first at index \(1, 3, 0, 1\)"):
        model.restore(bad)
    with pytest.raises(ValueError, match=rf"{name}.*index \(3, 0, 1\)"):
        model.restore(bad[1])


def test_restore_in_bf16_autocast_is_close_to_fp32_and_needs_native_bf16(monkeypatch):
    from lorun_peft.training import precision

    model, _, measurement = make_model("cs")
    full = model.restore(measurement)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)  # emulated here; exact about dtypes
    half = model.restore(measurement, autocast_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=3e-2, rtol=0)
    assert (half - full).abs().max() > 0, "the denoisers must have run in bf16"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="needs native bf16"):
        model.restore(measurement, autocast_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float16 needs a CUDA GPU"):
        model.restore(measurement, autocast_dtype=torch.float16)
    with pytest.raises(ValueError, match="autocast_dtype must be None, torch.bfloat16"):
        model.restore(measurement, autocast_dtype=torch.float64)

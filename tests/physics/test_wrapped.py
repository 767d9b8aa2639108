"""Bring your own operator: a plain class with A / A_adjoint unfolds, trains, saves and loads like ours."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorun_peft import LoRunModel, StageLoRAConfig, UNetConfig, UNetDenoiser
from lorun_peft.physics import (
    CASSI,
    BlockCS,
    BlurDownsample,
    WrappedOperator,
    adjointness_test,
    as_operator,
    gaussian_kernel,
    operator_norm,
    pgd_step_size,
    register_operator_factory,
)

torch.set_num_threads(1)


class Inpainting(nn.Module):
    """A user's ten-line operator: keep the pixels of a fixed random mask, scaled by ``gain``."""

    def __init__(self, size: int = 16, fraction: float = 0.5, gain: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mask", gain * (torch.rand(1, 1, size, size, generator=generator) < fraction))

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask


class CircularBlur(nn.Module):
    """A circular blur through a complex OTF buffer, with a closed-form ``prox_l2`` (DeepInverse style)."""

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        kernel = torch.zeros(size, size, dtype=torch.float64)
        kernel[:3, :3] = gaussian_kernel(3, 1.0).double()
        self.register_buffer("otf", torch.fft.fft2(kernel).to(torch.complex64))
        self.prox_calls = 0

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x) * self.otf).real.to(x.dtype)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.fft2(y) * self.otf.conj()).real.to(y.dtype)

    def prox_l2(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        self.prox_calls += 1
        mu = 1.0 / gamma
        numerator = torch.fft.fft2(self.A_adjoint(y) + mu * z)
        return torch.fft.ifft2(numerator / (self.otf.abs() ** 2 + mu)).real.to(z.dtype)


register_operator_factory("test-inpainting", Inpainting)
register_operator_factory("test-circular-blur", CircularBlur)


def dense(op, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of ``op.A`` on images of ``shape`` (float64), column by column."""
    n = int(torch.tensor(shape).prod())
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        return torch.stack([op.A(e.unsqueeze(0)).flatten() for e in eye], dim=1)


def tiny_denoiser() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))


@pytest.mark.parametrize("algorithm", ["pgd", "hqs"])
def test_a_users_class_trains_both_phases_saves_and_loads(tmp_path, algorithm: str) -> None:
    physics = as_operator(Inpainting(), factory="test-inpainting", args={"size": 16})
    model = LoRunModel.from_components(physics, tiny_denoiser(), num_stages=2, algorithm=algorithm)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    measurement = model.physics.measure(images)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = model(measurement, labels=images).loss.item()
    for _ in range(5):
        optimizer.zero_grad()
        model(measurement, labels=images).loss.backward()
        optimizer.step()
    assert model(measurement, labels=images).loss.item() < first
    model.save_pretrained(tmp_path / "backbone")
    model.add_stage_adapters("holes-30", StageLoRAConfig(num_stages=2, gamma=50), physics=physics)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_adapter_set(tmp_path / "sets", "holes-30")
    loaded = LoRunModel.from_pretrained(tmp_path / "backbone")
    assert (
        isinstance(loaded.physics, WrappedOperator)
        and loaded.physics.get_config()["factory"] == "test-inpainting"
    )
    loaded.load_adapter(tmp_path / "sets" / "holes-30")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(measurement).images, model(measurement).images, rtol=1e-5, atol=1e-5
        )


def test_what_cannot_be_rebuilt_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="cannot be saved or rebuilt: build it with as_operator"):
        LoRunModel.from_components(Inpainting(), tiny_denoiser(), num_stages=2)
    with pytest.raises(ValueError, match="'nope' is not registered"):
        as_operator(Inpainting(), factory="nope")
    with pytest.raises(TypeError, match="Identity has no A$"):
        as_operator(nn.Identity())
    with pytest.raises(ValueError, match="not registered in this process"):
        WrappedOperator.from_config({"factory": "gone", "args": {}})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        as_operator(Inpainting(), factory="test-inpainting", args={"size": object()})
    ours = BlockCS(0.25, block_size=8)
    assert as_operator(ours) is ours


def test_cg_hqs_step_matches_the_dense_solve() -> None:
    op = as_operator(Inpainting(size=6, gain=2.0), factory="test-inpainting", args={"size": 6, "gain": 2.0})
    op = op.double()
    matrix = dense(op, (1, 6, 6))
    z, x = torch.rand(1, 1, 6, 6, dtype=torch.float64), torch.rand(1, 1, 6, 6, dtype=torch.float64)
    y = op.A(x)
    mu = 0.3
    expected = torch.linalg.solve(
        matrix.T @ matrix + mu * torch.eye(36, dtype=torch.float64), matrix.T @ y.flatten() + mu * z.flatten()
    )
    torch.testing.assert_close(op.hqs_step(z, y, mu).flatten(), expected, rtol=1e-6, atol=1e-8)


def test_prox_l2_is_used_when_the_object_has_one_and_agrees_with_cg() -> None:
    blur = CircularBlur()
    op = as_operator(blur, factory="test-circular-blur")
    z, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    by_prox = op.hqs_step(z, y, torch.tensor([0.5, 2.0]))
    assert blur.prox_calls == 1
    cg = WrappedOperator(Inpainting(), factory=None)  # a stand-in to reach the CG path on the same blur
    cg.operator = nn.Module()
    cg.operator.A, cg.operator.A_adjoint = blur.A, blur.A_adjoint
    by_cg = cg.hqs_step(z, y, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(by_prox, by_cg, rtol=1e-4, atol=1e-5)


def test_dtype_moves_keep_complex_buffers_complex_and_state_is_contiguous(tmp_path) -> None:
    op = as_operator(CircularBlur(), factory="test-circular-blur")
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    reference = op.A(x.float()).double()
    op64 = op.to(torch.float64)
    assert op64.operator.otf.dtype == torch.complex128
    torch.testing.assert_close(op64.A(x), reference, rtol=1e-5, atol=1e-6)
    strided = as_operator(Inpainting(), factory="test-inpainting")
    strided.operator.mask = torch.rand(16, 1, 1, 16).permute(1, 2, 3, 0)  # a non-contiguous view
    assert all(value.is_contiguous() for value in strided.state_dict().values())


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: BlockCS(0.25, block_size=8), (1, 1, 16, 16)),
        (lambda: BlurDownsample(gaussian_kernel(5, 1.0), 2), (1, 1, 16, 16)),
        (lambda: CASSI((torch.rand(16, 16) > 0.5).float(), step=2), (1, 4, 16, 16)),
        (lambda: as_operator(CircularBlur(), factory="test-circular-blur"), (1, 1, 16, 16)),
    ],
)
def test_adjointness_and_operator_norm_of_every_operator(make, shape) -> None:
    op = make().double()
    assert adjointness_test(op, shape, torch.Generator().manual_seed(0)) < 1e-12
    expected = float(torch.linalg.matrix_norm(dense(op, shape[1:]), ord=2))
    norm = operator_norm(op, shape, iterations=500, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert norm == pytest.approx(expected, rel=1e-4)


def test_a_wrong_adjoint_is_caught() -> None:
    blur = CircularBlur()
    broken = as_operator(blur, factory="test-circular-blur")
    broken.operator.A_adjoint = blur.A  # the blur itself is not its own adjoint (the kernel is not centred)
    assert adjointness_test(broken.double(), (1, 1, 16, 16), torch.Generator().manual_seed(0)) > 1e-3


def test_auto_step_follows_the_operator_norm() -> None:
    """||A||^2 = 9: a fixed rho of 0.5 would diverge (rho ||A||^2 > 2); 'auto' starts at 1/9."""
    op = as_operator(Inpainting(gain=3.0), factory="test-inpainting", args={"gain": 3.0})
    assert pgd_step_size(op, (1, 1, 16, 16)) == pytest.approx(1 / 9, rel=1e-5)
    model = LoRunModel.from_components(op, tiny_denoiser(), 2, step_init="auto", image_shape=(1, 1, 16, 16))
    torch.testing.assert_close(model.steps.step, torch.full((2,), 1 / 9), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="needs image_shape"):
        LoRunModel.from_components(op, tiny_denoiser(), 2, step_init="auto")
    with pytest.raises(ValueError, match="HQS"):
        LoRunModel.from_components(
            op, tiny_denoiser(), 2, "hqs", step_init="auto", image_shape=(1, 1, 16, 16)
        )


def test_operator_norm_refuses_an_operator_that_returns_nan_or_overflows() -> None:
    class Broken:
        def __init__(self, scale: float) -> None:
            self.scale = scale

        def A(self, x):  # noqa: N802
            return x * self.scale

        def A_adjoint(self, y):  # noqa: N802
            return y * self.scale

    for scale in (float("nan"), 1e30):
        with pytest.raises(ValueError, match="non-finite value"):
            pgd_step_size(as_operator(Broken(scale)), (1, 1, 8, 8))

"""What every operator shares: config + state-dict round trip, gradients, measure, dtypes, Denoising."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from physics_testing import dense_hqs, dense_matrix

from lorun_peft.physics import (
    CASSI,
    PHYSICS_REGISTRY,
    BlockCS,
    BlurDownsample,
    Denoising,
    LinearOperator,
    gaussian_kernel,
    motion_kernel,
    physics_from_config,
)


def make_operators() -> list[tuple[LinearOperator, tuple[int, ...]]]:
    """One operator of each kind (non-default settings) with a matching image shape."""
    torch.manual_seed(0)
    return [
        (BlockCS(0.25, block_size=8, channels=3), (2, 3, 16, 24)),
        (BlockCS(0.3, block_size=4, matrix=torch.randn(5, 16)), (2, 1, 8, 8)),
        (CASSI(torch.rand(8, 10), step=3), (2, 5, 8, 10)),
        (BlurDownsample(motion_kernel(7, 4.0, 0.6), 3), (2, 3, 12, 15)),
        (Denoising(), (2, 3, 6, 7)),
    ]


def test_registry_holds_every_operator():
    assert {"block_cs", "cassi", "blur_downsample", "denoising"} <= set(PHYSICS_REGISTRY)
    with pytest.raises(ValueError, match="unknown physics type 'nope'; expected one of"):
        physics_from_config({"type": "nope"})


@pytest.mark.parametrize("index", range(5))
def test_config_and_state_dict_round_trip(index):
    op, shape = make_operators()[index]
    config = json.loads(json.dumps(op.get_config()))
    assert config["type"] == op.physics_type
    rebuilt = physics_from_config(config)
    assert type(rebuilt) is type(op)
    rebuilt.load_state_dict(op.state_dict())  # strict: same keys and shapes
    x = torch.rand(shape)
    y = op.A(x)
    for name, value in op.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    # Two instances may run other kernels: outputs agree to rounding, not bit for bit.
    torch.testing.assert_close(rebuilt.A(x), y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rebuilt.hqs_step(x, y, 0.3), op.hqs_step(x, y, 0.3), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rebuilt.init(y), op.init(y), rtol=1e-6, atol=1e-6)
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in op.named_parameters()]


def test_tensors_live_in_the_state_dict():
    keys = [sorted(op.state_dict()) for op, _ in make_operators()]
    assert keys == [["Phi"], ["Phi"], ["mask"], ["kernel"], []]


@pytest.mark.parametrize("index", range(5))
def test_gradients_reach_rho_mu_and_the_image(index):
    op, shape = make_operators()[index]
    x = torch.rand(shape, requires_grad=True)
    y = op.A(torch.rand(shape)).detach()
    rho = torch.tensor(0.5, requires_grad=True)
    mu = torch.tensor([0.2, 0.9], requires_grad=True)
    loss = op.gradient_step(x, y, rho).square().sum() + op.hqs_step(x, y, mu).square().sum()
    loss.backward()
    for grad in (rho.grad, mu.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradients_reach_a_learnable_phi():
    op = BlockCS(0.25, block_size=4)
    x = torch.rand(2, 1, 8, 8)
    y = op.A(torch.rand(2, 1, 8, 8)).detach()
    op.hqs_step(x, y, 0.1).square().sum().backward()
    grad_hqs = op.Phi.grad.clone()
    op.Phi.grad = None
    op.gradient_step(x, y, 0.5).square().sum().backward()
    assert grad_hqs.abs().sum() > 0 and op.Phi.grad.abs().sum() > 0


def test_hqs_gradients_match_finite_differences():
    torch.manual_seed(0)
    phi = torch.randn(4, 16, dtype=torch.float64) / 4
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = torch.randn(2, 4, 2, 2, dtype=torch.float64)

    def cs(phi, mu):
        op = BlockCS(0.25, block_size=4, matrix=phi)
        op.Phi = phi  # keep the autograd graph to phi
        return op.hqs_step(z, y, mu)

    mu = torch.tensor([0.3, 1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cs, (phi.requires_grad_(), mu))

    cassi = CASSI(torch.rand(4, 5, dtype=torch.float64), 2)
    zc, yc = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 4, 9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: cassi.hqs_step(zc, yc, m), (mu,))
    sr = BlurDownsample(gaussian_kernel(5, (1.5, 0.6), 0.3).double(), 2)
    zs, ys = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: sr.hqs_step(zs, ys, m), (mu,))


def test_float64_inputs_to_given_float64_tensors_keep_float64():
    kernel = gaussian_kernel(5, 1.0).double()
    assert BlurDownsample(kernel, 2).kernel.dtype == torch.float64
    assert CASSI(torch.rand(3, 3, dtype=torch.float64)).mask.dtype == torch.float64
    assert CASSI(torch.ones(3, 3, dtype=torch.bool)).mask.dtype == torch.get_default_dtype()


def test_measure_adds_gaussian_noise_reproducibly():
    op = BlurDownsample(gaussian_kernel(5, 1.0), 2)
    x = torch.rand(4, 3, 64, 64)
    clean = op.measure(x)
    torch.testing.assert_close(clean, op.A(x))
    noisy = op.measure(x, noise_sigma=0.1, generator=torch.Generator().manual_seed(7))
    again = op.measure(x, noise_sigma=0.1, generator=torch.Generator().manual_seed(7))
    # Same noise draw; the blur A(x) under it is computed twice and so agrees only to rounding.
    torch.testing.assert_close(noisy, again, rtol=1e-5, atol=1e-6)
    assert abs(float((noisy - clean).std()) - 0.1) < 0.005
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_sigma must be a finite number >= 0"):
            op.measure(x, noise_sigma=bad)
    torch.testing.assert_close(op.measure(x, noise_sigma=np.float32(0.0)), clean)  # NumPy numbers are numbers


def test_integer_images_and_bad_step_sizes_are_refused():
    cs = BlockCS(0.25, block_size=8)
    with pytest.raises(TypeError, match=r"floating-point image tensor.*torch.int64"):
        cs.measure(torch.randint(0, 255, (1, 1, 16, 16)))
    x = torch.rand(1, 1, 16, 16)
    y = cs.measure(x)
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mu must be a finite number > 0"):
            cs.hqs_step(x, y, bad)
        with pytest.raises(ValueError, match="rho must be a finite number > 0"):
            cs.gradient_step(x, y, bad)
    with pytest.raises(TypeError, match="rho must be a number or a tensor"):
        cs.gradient_step(x, y, "0.5")
    torch.testing.assert_close(cs.gradient_step(x, y, np.float64(0.5)), cs.gradient_step(x, y, 0.5))


def test_pgd_iterations_reduce_the_data_misfit():
    torch.manual_seed(0)
    op = CASSI(torch.rand(16, 16), 2)
    y = op.A(torch.rand(1, 8, 16, 16))
    x = op.init(y)
    misfits = []
    for _ in range(5):
        x = op.gradient_step(x, y, 0.5)
        misfits.append(float((op.A(x) - y).norm()))
    assert misfits == sorted(misfits, reverse=True) and misfits[-1] < misfits[0]


def test_denoising_is_the_identity_with_a_weighted_average_hqs_step():
    op = Denoising()
    shape = (1, 2, 3, 4)
    x = torch.randn(shape, dtype=torch.float64)
    assert torch.equal(op.A(x), x) and torch.equal(op.A_adjoint(x), x) and torch.equal(op.init(x), x)
    matrix = dense_matrix(op, shape)
    torch.testing.assert_close(matrix, torch.eye(24, dtype=torch.float64))
    z, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    ref = dense_hqs(matrix, z, y, 0.4)
    assert (op.hqs_step(z, y, 0.4).reshape(-1) - ref).norm() <= 1e-8 * ref.norm()
    torch.testing.assert_close(op.gradient_step(z, y, 1.0), y)
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\)"):
        op.A(torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"expected the iterate's \(1, 2, 3, 4\)"):
        op.hqs_step(z, torch.rand(1, 2, 3, 5), 0.1)


def test_operators_refuse_empty_or_non_finite_tensors_and_accept_numpy_ratios():
    bad_phi = torch.randn(16, 64)
    bad_phi[3, 5] = float("nan")
    with pytest.raises(ValueError, match="CS sampling matrix holds 1 NaN or infinite"):
        BlockCS(0.25, block_size=8, matrix=bad_phi)
    mask = torch.rand(8, 8)
    mask[0, 0] = float("inf")
    with pytest.raises(ValueError, match="CASSI mask holds 1 NaN or infinite"):
        CASSI(mask)
    with pytest.raises(ValueError, match="CASSI mask is empty"):
        CASSI(torch.zeros(0, 0))
    kernel = gaussian_kernel(5, 1.0)
    kernel[2, 2] = float("nan")
    with pytest.raises(ValueError, match="blur kernel holds 1 NaN"):
        BlurDownsample(kernel, 2)
    assert BlockCS(np.float32(0.25), block_size=8).num_rows == 16
    for bad in ("0.25", True, torch.tensor(0.25)):
        with pytest.raises(ValueError, match=r"CS ratio must be a number in \(0, 1\]"):
            BlockCS(bad, block_size=8)

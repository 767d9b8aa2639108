"""Every operator refuses integer, empty or mis-shaped inputs with one clear error (no raw kernel error)."""

from __future__ import annotations

import pytest
import torch

from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, gaussian_kernel

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("make", "bad", "error", "message"),
    [
        (lambda: BlockCS(0.25, block_size=8), torch.rand(1, 1, 0, 0), ValueError, "every axis >= 1"),
        (
            lambda: BlockCS(0.25, block_size=8),
            torch.randint(0, 255, (1, 1, 16, 16)),
            TypeError,
            "floating-point",
        ),
        (lambda: CASSI(torch.rand(8, 8)), torch.rand(1, 0, 8, 8), ValueError, "every axis >= 1"),
        (
            lambda: CASSI(torch.rand(8, 8)),
            torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8),
            TypeError,
            "x.float()",
        ),
        (
            lambda: BlurDownsample(gaussian_kernel(5, 1.0), 2),
            torch.rand(1, 3, 0, 8),
            ValueError,
            "smaller than the kernel",
        ),
        (
            lambda: BlurDownsample(gaussian_kernel(5, 1.0), 2),
            torch.rand(3, 8, 8),
            ValueError,
            "expected (B, C, H, W)",
        ),
    ],
)
def test_forward_operator_input_errors(make, bad, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        make().A(bad)


def test_sr_init_refuses_what_the_adjoint_refuses():
    physics = BlurDownsample(gaussian_kernel(5, 1.0), 2)
    tiny = torch.rand(1, 1, 2, 2)  # a 4x4 image: smaller than the 5x5 kernel
    with pytest.raises(ValueError, match="smaller than the kernel"):
        physics.A_adjoint(tiny)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        physics.init(tiny)
    assert physics.init(torch.rand(1, 1, 4, 4)).shape == (1, 1, 8, 8)


def test_hqs_step_on_a_rank_deficient_phi_is_one_clear_error() -> None:
    """Phi Phi^T + mu I singular in floating point: a ValueError naming mu and the rank, not _LinAlgError."""
    cs = BlockCS(0.25, block_size=8, matrix=torch.ones(16, 64))  # rank 1: the solve's pivots hit exactly 0
    z = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"numerically singular at mu=1e-12 \(Phi has rank 1 of 16 rows\)"):
        cs.hqs_step(z, cs.A(z), 1e-12)
    assert torch.isfinite(cs.hqs_step(z, cs.A(z), 0.5)).all()

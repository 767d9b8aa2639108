"""Step parameters: positive, start at the configured value, the paper's noise levels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lorun_peft.unfolding.steps import StageSteps, inverse_softplus


@pytest.mark.parametrize("value", [1e-3, 0.5, 2.0, 30.0])
def test_inverse_softplus_inverts_softplus(value):
    assert F.softplus(torch.tensor(inverse_softplus(value), dtype=torch.float64)).item() == pytest.approx(
        value
    )


def test_inverse_softplus_rejects_non_positive():
    with pytest.raises(ValueError, match="positive"):
        inverse_softplus(0.0)


@pytest.mark.parametrize("algorithm, step_name", [("pgd", "rho"), ("hqs", "mu"), ("gap", "mu")])
def test_steps_start_at_half_with_the_paper_noise_level(algorithm, step_name):
    steps = StageSteps(4, algorithm)
    assert hasattr(steps, f"raw_{step_name}")
    torch.testing.assert_close(steps.step, torch.full((4,), 0.5))
    torch.testing.assert_close(steps.lam, torch.full((4,), 0.5))
    with torch.no_grad():
        getattr(steps, f"raw_{step_name}").copy_(
            torch.tensor([inverse_softplus(v) for v in (0.2, 0.4, 0.8, 1.6)])
        )
    rho_or_mu = torch.tensor([0.2, 0.4, 0.8, 1.6])
    expected = torch.sqrt(rho_or_mu * 0.5) if algorithm == "pgd" else torch.sqrt(0.5 / rho_or_mu)
    torch.testing.assert_close(steps.sigma(), expected)
    assert steps.as_dict()[step_name] == pytest.approx(rho_or_mu.tolist())


def test_steps_stay_positive_after_large_updates():
    steps = StageSteps(3, "pgd")
    with torch.no_grad():
        steps.raw_rho.fill_(-50.0)
        steps.raw_lambda.fill_(-50.0)
    assert (steps.step > 0).all() and (steps.lam > 0).all()
    steps.reset_parameters()
    assert steps.step.tolist() == pytest.approx([0.5] * 3)


def test_steps_reject_bad_arguments():
    with pytest.raises(ValueError, match="algorithm"):
        StageSteps(3, "admm")
    with pytest.raises(ValueError, match="num_stages"):
        StageSteps(0, "pgd")


def test_inverse_softplus_formula():
    assert inverse_softplus(0.5) == pytest.approx(math.log(math.exp(0.5) - 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -0.5])
def test_non_finite_or_non_positive_step_init_is_refused(bad):
    from lorun_peft.denoisers import UNetConfig, UNetDenoiser
    from lorun_peft.physics import BlockCS
    from lorun_peft.unfolding import LoRunModel

    denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))
    with pytest.raises(ValueError, match="finite positive number"):
        LoRunModel.from_components(BlockCS(0.25, block_size=8), denoiser, num_stages=2, step_init=bad)

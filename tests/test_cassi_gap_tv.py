"""GAP-TV, the classical CASSI baseline: its TV denoiser and its reconstructions."""

from __future__ import annotations

import pytest
import torch

from lorun_peft import CASSI
from lorun_peft.metrics import cassi_psnr
from lorun_peft.tasks.cassi_gap_tv import _divergence, _gradient, gap_tv, tv_denoise


def _tv(x: torch.Tensor) -> torch.Tensor:
    gx, gy = _gradient(x)
    return torch.sqrt(gx.square() + gy.square()).sum()


def _piecewise_cube(bands: int = 6, size: int = 32) -> torch.Tensor:
    """Four flat regions with smooth spectra: the kind of scene TV suits."""
    wave = torch.linspace(0, 1, bands)[:, None, None]
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    top, left = (rows < size // 2).float(), (cols < size // 3).float()
    return (0.2 + 0.5 * top * wave + 0.25 * left * (1 - wave) + 0.1 * top * left).unsqueeze(0)


def test_divergence_is_the_negative_adjoint_of_the_gradient() -> None:
    torch.manual_seed(0)
    x, px, py = (torch.randn(2, 3, 7, 9, dtype=torch.float64) for _ in range(3))
    gx, gy = _gradient(x)
    inner = (gx * px).sum() + (gy * py).sum()
    assert abs(float(inner + (x * _divergence(px, py)).sum())) < 1e-10


def test_tv_denoise_minimises_the_rof_objective() -> None:
    torch.manual_seed(0)
    noisy = _piecewise_cube()[0, :2] + 0.05 * torch.randn(2, 32, 32)
    weight = 0.05
    denoised, _ = tv_denoise(noisy, weight, iterations=300)

    def objective(x: torch.Tensor) -> float:
        return float(0.5 * (x - noisy).square().sum() + weight * _tv(x))

    best = objective(denoised)
    assert best < objective(noisy) and _tv(denoised) < 0.5 * _tv(noisy)
    for _ in range(5):  # no small perturbation does better
        assert objective(denoised + 1e-3 * torch.randn_like(denoised)) > best


def test_tv_denoise_with_a_huge_weight_returns_each_slice_mean() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 8, 8)
    flat, _ = tv_denoise(image, 100.0, iterations=2000)
    means = image.mean(dim=(-2, -1), keepdim=True).expand_as(image)
    torch.testing.assert_close(flat, means, atol=2e-3, rtol=0)


def test_gap_tv_restores_far_better_than_the_initial_estimate() -> None:
    torch.manual_seed(0)
    physics = CASSI((torch.rand(32, 32) > 0.5).float(), step=2)
    cube = _piecewise_cube()
    y = physics.A(cube)
    restored = gap_tv(physics, y, iterations=60)
    assert restored.shape == cube.shape and restored.min() >= 0 and restored.max() <= 1
    initial = float(cassi_psnr(physics.init(y).clamp(0, 1), cube))
    gained = float(cassi_psnr(restored, cube))
    assert gained > initial + 20, (initial, gained)  # 13.0 -> 42.3 dB here
    # it is consistent with the measurement
    assert float((physics.A(restored) - y).abs().mean()) < 0.05 * float(y.abs().mean())


def test_the_accelerated_update_converges_faster_than_plain_gap() -> None:
    """At a few iterations the accumulated residual pays (measured on cloth: +0.5 dB at 9 iterations)."""
    torch.manual_seed(0)
    physics = CASSI((torch.rand(32, 32) > 0.5).float(), step=2)
    cube = _piecewise_cube()
    y = physics.A(cube)
    fast = float(cassi_psnr(gap_tv(physics, y, iterations=9, decay=0.7), cube))
    plain = float(cassi_psnr(gap_tv(physics, y, iterations=9, decay=0.7, accelerate=False), cube))
    assert fast > plain + 1.0, (fast, plain)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iterations": 0}, "iterations and tv_iterations must be >= 1"),
        ({"weight": 0.0}, "need weight > 0"),
        ({"decay": 1.5}, "0 < decay <= 1"),
    ],
)
def test_gap_tv_rejects_bad_settings(kwargs: dict, match: str) -> None:
    physics = CASSI(torch.ones(8, 8))
    with pytest.raises(ValueError, match=match):
        gap_tv(physics, physics.A(torch.rand(1, 3, 8, 8)), **kwargs)


def test_gap_tv_rejects_a_measurement_of_the_wrong_width() -> None:
    physics = CASSI(torch.ones(8, 8))
    with pytest.raises(ValueError, match="measurement"):
        gap_tv(physics, torch.rand(1, 8, 9))


def _low_rank_cube(bands: int = 16, size: int = 32) -> torch.Tensor:
    """Two spectra mixed by piecewise-flat and smoothly varying maps: spectral rank 2."""
    wave = torch.linspace(0, 1, bands)
    spectra = torch.stack([0.3 + 0.6 * wave, 0.9 - 0.7 * wave])  # (2, bands)
    rows, cols = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    maps = torch.stack([(rows < 0.5).float() * 0.6 + 0.2 * cols, (cols > 0.3).float() * 0.5 + 0.2 * rows])
    return torch.einsum("rb,rhw->bhw", spectra, maps).clamp(0, 1).unsqueeze(0)


def test_gap_tv_in_a_spectral_subspace_stays_in_it_and_restores_a_low_rank_scene_better() -> None:
    from lorun_peft.data.spectral import principal_spectra

    torch.manual_seed(0)
    physics = CASSI((torch.rand(32, 32) > 0.5).float(), step=2)
    cube = _low_rank_cube()
    y = physics.A(cube)
    basis = principal_spectra([cube[0]], 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-5, rtol=0)
    bands = gap_tv(physics, y, iterations=30)
    subspace = gap_tv(physics, y, iterations=30, spectral_basis=basis)
    outside = subspace - torch.einsum("cr,sr,bshw->bchw", basis, basis, subspace)
    assert float(outside.abs().max()) < 1e-4  # the clamp to [0, 1] is the only way out of the span
    plain, low_rank = float(cassi_psnr(bands, cube)), float(cassi_psnr(subspace, cube))
    assert low_rank > plain + 0.75, (plain, low_rank)  # 30.05 -> 31.58 dB here


def test_gap_tv_rejects_a_bad_spectral_basis() -> None:
    physics = CASSI(torch.ones(8, 8))
    y = physics.A(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(4, r\)"):
        gap_tv(physics, y, spectral_basis=torch.eye(5)[:, :2])
    with pytest.raises(ValueError, match="orthonormal"):
        gap_tv(physics, y, spectral_basis=torch.ones(4, 2))


def test_principal_spectra_checks_its_inputs() -> None:
    from lorun_peft.data.spectral import principal_spectra

    with pytest.raises(ValueError, match="rank"):
        principal_spectra([torch.rand(4, 5, 5)], 5)
    with pytest.raises(ValueError, match="one band count"):
        principal_spectra([torch.rand(4, 5, 5), torch.rand(3, 5, 5)], 2)
    with pytest.raises(ValueError, match="at least one"):
        principal_spectra([], 2)
    with pytest.raises(ValueError, match="NaN"):
        principal_spectra([torch.full((4, 5, 5), float("nan"))], 2)

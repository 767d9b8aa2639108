"""DeepInverse both ways: our operators against deepinv's equivalents; each library runs on the other's.

deepinv is a test dependency (`make install` installs the `deepinv` extra), so nothing here is skipped: a
missing deepinv fails these tests. Matching rule: our ``hqs_step(z, y, mu)`` is deepinv's
``prox_l2(z, y, gamma=1/mu)``. Cross-checks run in float64, where both sides agree to rounding (~1e-15).
"""

from __future__ import annotations

import sys

import pytest
import torch

from lorun_peft import LoRunModel, StageLoRAConfig, UNetConfig, UNetDenoiser
from lorun_peft.physics import (
    CASSI,
    OPERATOR_FACTORIES,
    BlockCS,
    BlurDownsample,
    WrappedOperator,
    adjointness_test,
    operator_norm,
    pgd_step_size,
)
from lorun_peft.physics.deepinv import from_deepinv, import_deepinv, to_deepinv

torch.set_num_threads(1)
dinv = import_deepinv()
F64 = torch.float64


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


def asymmetric_kernel(size: int = 5) -> torch.Tensor:
    """A positive kernel without symmetry (a flip or a shift between the two conventions would show)."""
    kernel = torch.rand(size, size, generator=generator(3), dtype=F64) + 0.1
    kernel[0, -1] += 2.0
    return kernel / kernel.sum()


def test_deepinv_is_importable_and_pinned() -> None:
    assert dinv.__version__ == "0.5.0"
    assert isinstance(BlockCS(0.25, block_size=8).to_deepinv(), dinv.physics.LinearPhysics)


def test_a_missing_deepinv_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "deepinv", None)  # `import deepinv` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'lorun-peft\[deepinv\]'"):
        import_deepinv()


def test_block_cs_equals_a_block_diagonal_compressed_sensing() -> None:
    b, height, width = 4, 8, 12
    cs = BlockCS(0.5, block_size=b).double()
    n, h, w = cs.num_rows, height // b, width // b
    phi = cs.Phi.detach()
    # Row (r, i, j) of the block-diagonal matrix samples block (i, j) with row r of Phi (row-major pixels).
    matrix = torch.zeros(n * h * w, height * width, dtype=F64)
    for i in range(h):
        for j in range(w):
            rows = torch.arange(n) * h * w + i * w + j
            pixels = ((i * b + torch.arange(b))[:, None] * width + j * b + torch.arange(b)).flatten()
            matrix[rows[:, None], pixels[None, :]] = phi
    theirs = dinv.physics.CompressedSensing(m=n * h * w, img_size=(1, height, width), dtype=F64)
    theirs._A, theirs._A_adjoint = matrix, matrix.T.contiguous()
    x = torch.randn(3, 1, height, width, generator=generator(), dtype=F64)
    with torch.no_grad():
        y = cs.A(x)
        assert max_abs(theirs.A(x), y.reshape(3, -1)) <= 1e-14  # measured 8.9e-16
        r = torch.randn(y.shape, generator=generator(1), dtype=F64)
        assert max_abs(theirs.A_adjoint(r.reshape(3, -1)), cs.A_adjoint(r)) <= 1e-14  # measured 4.4e-16
        # our closed-form (Woodbury) HQS step = the dense prox of deepinv's matrix
        z, mu = torch.randn(x.shape, generator=generator(2), dtype=F64), 0.3
        dense = torch.linalg.solve(
            matrix.T @ matrix + mu * torch.eye(height * width, dtype=F64),
            (matrix.T @ y.reshape(3, -1).T + mu * z.reshape(3, -1).T),
        ).T.reshape(x.shape)
        assert max_abs(cs.hqs_step(z, y, mu), dense) <= 1e-13  # measured 1.8e-15


def test_blur_downsample_equals_circular_downsampling_and_its_prox() -> None:
    kernel, scale = asymmetric_kernel(5), 2
    ours = BlurDownsample(kernel, scale)
    theirs = dinv.physics.Downsampling(
        img_size=(2, 12, 16), filter=kernel[None, None], factor=scale, padding="circular"
    )  # a float64 filter: float64 maths (deepinv's own .to(float64) would drop the imaginary part of Fh)
    assert theirs.Fh.dtype == torch.complex128
    x = torch.randn(3, 2, 12, 16, generator=generator(), dtype=F64)
    y = ours.A(x)
    assert max_abs(theirs.A(x), y) <= 1e-14  # measured 2.2e-16
    r = torch.randn(y.shape, generator=generator(1), dtype=F64)
    assert max_abs(theirs.A_adjoint(r), ours.A_adjoint(r)) <= 1e-14  # measured 2.2e-16
    z = torch.randn(x.shape, generator=generator(2), dtype=F64)
    for mu in (0.05, 2.0, torch.tensor([0.01, 0.5, 5.0], dtype=F64)):
        gamma = 1.0 / mu.view(-1, 1, 1, 1) if isinstance(mu, torch.Tensor) else 1.0 / mu
        assert max_abs(ours.hqs_step(z, y, mu), theirs.prox_l2(z, y, gamma)) <= 1e-13  # measured 5.8e-15


@pytest.mark.parametrize("bands, height, width", [(4, 7, 8), (3, 5, 7), (8, 9, 10)])
def test_cassi_equals_sd_compressive_spectral_imaging_over_bands(bands: int, height: int, width: int) -> None:
    """deepinv's SD-CASSI (shear along W) averages the bands: A_theirs = A_ours / C, with step 1.

    Its shear is a convolution with a centred delta, exact only when H and W + C - 1 are odd (the cases
    here); for an even size it lands one row (or column) off, see the next test. It also needs C <= W.
    deepinv's CG adds eps = 1e-8 to its denominators, so its prox agrees with our closed form to ~2e-7.
    """
    mask = (torch.rand(height, width, generator=generator()) < 0.5).to(F64)
    ours = CASSI(mask, step=1)
    theirs = dinv.physics.CompressiveSpectralImaging(
        (bands, height, width), mask=mask.expand(1, bands, height, width).clone(), mode="sd", shear_dir="w"
    )
    x = torch.randn(2, bands, height, width, generator=generator(1), dtype=F64)
    y = ours.A(x)
    assert max_abs(theirs.A(x)[:, 0] * bands, y) <= 1e-13  # measured 8.9e-16
    r = torch.randn(y.shape, generator=generator(2), dtype=F64)
    assert max_abs(theirs.A_adjoint(r[:, None]) * bands, ours.A_adjoint(r)) <= 1e-13  # measured 2.2e-16
    # The 1/C scaling moves the step: prox_l2 of A/C at gamma, on y/C, is our hqs_step at mu = C^2 / gamma.
    z, gamma = torch.randn(x.shape, generator=generator(3), dtype=F64), 0.7
    theirs_prox = dinv.physics.LinearPhysics.prox_l2(
        theirs, z, y[:, None] / bands, gamma, solver="CG", max_iter=2000, tol=1e-12
    )
    assert max_abs(theirs_prox, ours.hqs_step(z, y, bands**2 / gamma)) <= 1e-6  # CG; measured 2.3e-7


def test_deepinv_cassi_is_one_row_up_on_an_even_height() -> None:
    bands, height, width = 4, 6, 8  # H even, W + C - 1 = 11 odd
    mask = (torch.rand(height, width, generator=generator()) < 0.5).to(F64)
    theirs = dinv.physics.CompressiveSpectralImaging(
        (bands, height, width), mask=mask.expand(1, bands, height, width).clone(), mode="sd", shear_dir="w"
    )
    x = torch.randn(1, bands, height, width, generator=generator(1), dtype=F64)
    shifted, ours = theirs.A(x)[:, 0] * bands, CASSI(mask, step=1).A(x)
    # deepinv's row h is our row h + 1: our first row is lost, its last row is zeros (so no exact adjoint)
    assert max_abs(shifted[:, :-1], ours[:, 1:]) <= 1e-13 and float(shifted[:, -1].abs().max()) == 0.0


def test_deepinv_runs_on_our_operators() -> None:
    """deepinv's own tools on to_deepinv(op): its dot test, its norm, its generic prox vs our closed form."""
    cases = [
        (BlockCS(0.25, block_size=8), (2, 1, 16, 16)),
        (BlurDownsample(asymmetric_kernel(5).float(), 2), (2, 3, 16, 16)),
        (CASSI((torch.rand(16, 16, generator=generator()) < 0.5).float(), step=2), (2, 5, 16, 16)),
    ]
    for op, shape in cases:
        physics = op.double().to_deepinv()
        assert isinstance(physics, dinv.physics.LinearPhysics) and physics.operator is op
        x = torch.randn(shape, generator=generator(1), dtype=F64)
        with torch.no_grad():
            assert float(physics.adjointness_test(x).abs()) <= 1e-13
            norm = float(physics.compute_norm(x, max_iter=500, tol=1e-10, verbose=False))
            assert norm == pytest.approx(operator_norm(op, shape, 500, 1e-10) ** 2, rel=1e-4)  # ||A||^2
            y, z = physics(x), torch.randn(shape, generator=generator(2), dtype=F64)
            closed = physics.prox_l2(z, y, torch.tensor([0.5, 4.0], dtype=F64))
            cg = dinv.physics.LinearPhysics.prox_l2(physics, z, y, 0.5, solver="CG", max_iter=2000, tol=1e-12)
            assert max_abs(closed[:1], cg[:1]) <= 1e-6  # deepinv's CG (eps = 1e-8 inside): ~2e-7
            assert max_abs(closed[1:], op.hqs_step(z[1:], y[1:], 0.25)) <= 1e-14


def test_a_deepinv_algorithm_solves_a_problem_on_block_cs() -> None:
    """deepinv's PGD (L2 data term, Tikhonov prior) on to_deepinv(BlockCS) reaches the ridge solution,
    which is our HQS step from z = 0: ``(A^T A + lam I)^-1 A^T y``; the step follows the operator norm."""
    cs = BlockCS(0.25, block_size=8).double()
    physics = to_deepinv(cs)
    x = torch.rand(1, 1, 16, 16, generator=generator(), dtype=F64)
    y, lam = physics(x), 0.5
    step = 1.0 / (operator_norm(cs, (1, 1, 16, 16)) ** 2 + lam)
    solver = dinv.optim.PGD(
        data_fidelity=dinv.optim.L2(),
        prior=dinv.optim.Tikhonov(),
        lambda_reg=lam,
        stepsize=step,
        max_iter=300,
    )
    with torch.no_grad():
        estimate = solver(y, physics)
        ridge = physics.prox_l2(0.0, y, 1.0 / lam)
    assert max_abs(ridge, cs.hqs_step(torch.zeros_like(x), y, lam)) <= 1e-15
    assert max_abs(estimate, ridge) <= 1e-10  # measured 5.0e-16


def test_deepinv_physics_through_from_deepinv_pass_our_tools() -> None:
    inpainting = dinv.physics.Inpainting((2, 12, 12), mask=0.6, rng=generator())
    downsampling = dinv.physics.Downsampling(
        img_size=(1, 12, 12), filter=asymmetric_kernel(3).float()[None, None], factor=3, padding="circular"
    )
    for physics, shape in [(inpainting, (1, 2, 12, 12)), (downsampling, (1, 1, 12, 12))]:
        op = from_deepinv(physics).double()  # complex FFT buffers stay complex (incl. torch.conj views)
        assert isinstance(op, WrappedOperator) and op.get_config()["factory"].startswith("deepinv.")
        assert adjointness_test(op, shape, generator(1)) <= 1e-13
        assert to_deepinv(op) is physics
    assert downsampling.Fhc.dtype == torch.complex128
    # hqs_step goes through deepinv's closed-form prox_l2: inpainting's is (A^T y + mu z) / (mask^2 + mu)
    op = from_deepinv(inpainting).double()
    z, y = torch.rand(2, 2, 12, 12, dtype=F64), torch.rand(2, 2, 12, 12, dtype=F64)
    mask = inpainting.mask
    for mu in (0.3, torch.tensor([0.1, 3.0], dtype=F64)):
        m = mu.view(-1, 1, 1, 1) if isinstance(mu, torch.Tensor) else mu
        assert max_abs(op.hqs_step(z, y, mu), (mask * y + m * z) / (mask**2 + m)) <= 1e-15
    # PGD's safe step 1/||A||^2 from the operator norm: 1 for a 0/1 mask
    assert pgd_step_size(op, (1, 2, 12, 12)) == pytest.approx(1.0, rel=1e-6)


def test_a_deepinv_inpainting_unfolds_trains_both_phases_saves_and_reloads(tmp_path, monkeypatch) -> None:
    physics = from_deepinv(dinv.physics.Inpainting((1, 16, 16), mask=0.5, rng=generator()))
    torch.manual_seed(0)
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))
    model = LoRunModel.from_components(physics, denoiser, num_stages=2, algorithm="hqs", step_init=0.5)
    torch.testing.assert_close(model.physics.operator.mask, physics.operator.mask, rtol=0, atol=0)
    images = torch.rand(2, 1, 16, 16, generator=generator(1))
    measurement = model.physics.measure(images, noise_sigma=0.01, generator=generator(2))

    def train(steps: int) -> tuple[float, float]:
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        first = model(measurement, labels=images).loss.item()
        for _ in range(steps):
            optimizer.zero_grad()
            model(measurement, labels=images).loss.backward()
            optimizer.step()
        return first, model(measurement, labels=images).loss.item()

    first, last = train(3)  # phase 1: backbone
    assert last < first
    model.save_pretrained(tmp_path / "backbone")
    model.add_stage_adapters("holes-50", StageLoRAConfig(num_stages=2, gamma=50), physics=physics)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=generator(3))
    first, last = train(2)  # phase 2: the stage adapters only
    assert last < first
    model.save_adapter_set(tmp_path / "sets", "holes-50")

    # A fresh process has not imported lorun_peft.physics.deepinv: loading registers its factories.
    for name in [n for n in OPERATOR_FACTORIES if n.startswith("deepinv.")]:
        monkeypatch.delitem(OPERATOR_FACTORIES, name)
    for module in ("lorun_peft.physics.deepinv",):
        monkeypatch.delitem(sys.modules, module)
    loaded = LoRunModel.from_pretrained(tmp_path / "backbone")
    assert "deepinv.Inpainting" in OPERATOR_FACTORIES
    assert isinstance(loaded.physics.operator, dinv.physics.Inpainting)
    loaded.load_adapter(tmp_path / "sets" / "holes-50")
    saved = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved[key]), key  # weights: exactly
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(measurement).images, model(measurement).images, rtol=1e-5, atol=1e-6
        )


def test_unknown_deepinv_state_is_not_saved_silently() -> None:
    noisy = dinv.physics.Inpainting((1, 8, 8), mask=0.5, rng=generator())
    noisy.extra = torch.nn.Linear(2, 2)  # state the factory cannot rebuild
    with pytest.warns(UserWarning, match="cannot be saved"):
        op = from_deepinv(noisy)
    with pytest.raises(ValueError, match="cannot be saved or rebuilt"):
        op.get_config()
    with pytest.raises(TypeError, match="LinearPhysics"):
        from_deepinv(BlockCS(0.25, block_size=8))
    with pytest.raises(TypeError, match="LinearOperator"):
        to_deepinv(torch.nn.Identity())

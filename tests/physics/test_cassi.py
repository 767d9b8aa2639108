"""SD-CASSI: shift convention, exact adjoint, diagonal HQS step, MST init, real masks, errors."""

from __future__ import annotations

import pytest
import torch
from physics_testing import assert_adjoint, dense_hqs, dense_matrix, shared_file

from lorun_peft.physics import CASSI, load_cassi_mask, load_cassi_measurement


def shifted_sum(x: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
    """Reference forward model written band by band: mask, shift right by step*c, sum."""
    batch, bands, height, width = x.shape
    y = x.new_zeros(batch, height, width + step * (bands - 1))
    for c in range(bands):
        y[:, :, step * c : step * c + width] += x[:, c] * mask
    return y


@pytest.mark.parametrize(("bands", "step"), [(1, 2), (3, 1), (4, 2), (5, 3)])
def test_forward_shifts_band_c_right_by_step_c(bands, step):
    gen = torch.Generator().manual_seed(bands)
    mask = torch.rand(5, 7, generator=gen, dtype=torch.float64)
    op = CASSI(mask, step).double()
    x = torch.randn(2, bands, 5, 7, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(op.A(x), shifted_sum(x, mask, step))
    assert op.measurement_shape(tuple(x.shape)) == (2, 5, 7 + step * (bands - 1))
    assert op.image_shape(op.measurement_shape(tuple(x.shape))) == tuple(x.shape)


@pytest.mark.parametrize(
    ("size", "bands", "step"), [((5, 7), 3, 1), ((6, 8), 4, 2), ((9, 4), 6, 3), ((256, 256), 28, 2)]
)
def test_adjoint(size, bands, step):
    gen = torch.Generator().manual_seed(bands)
    op = CASSI(torch.rand(size, generator=gen), step).double()
    assert_adjoint(op, torch.randn(1, bands, *size, dtype=torch.float64, generator=gen), gen)


def test_28_band_cube_gives_256x310():
    op = CASSI(torch.rand(256, 256))
    y = op.measure(torch.rand(1, 28, 256, 256))
    assert y.shape == (1, 256, 310)
    assert op.bands(y) == 28 and op.init(y).shape == (1, 28, 256, 256)


def test_init_is_mst_shift_back_without_mask():
    op = CASSI(torch.rand(4, 6), step=2).double()
    y = torch.randn(2, 4, 6 + 2 * 4, dtype=torch.float64)
    x0 = op.init(y)
    assert x0.shape == (2, 5, 4, 6)
    for c in range(5):
        torch.testing.assert_close(x0[:, c], y[:, :, 2 * c : 2 * c + 6] / 5 * 2)


@pytest.mark.parametrize(("bands", "step"), [(4, 2), (3, 1), (3, 3)])
def test_hqs_step_matches_dense_solve(bands, step):
    torch.manual_seed(bands * step)
    op = CASSI(torch.rand(6, 8), step).double()
    shape = (1, bands, 6, 8)
    matrix = dense_matrix(op, shape)
    z = torch.randn(shape, dtype=torch.float64)
    y = torch.randn(op.measurement_shape(shape), dtype=torch.float64)
    for mu in (0.01, 0.7):
        ref = dense_hqs(matrix, z, y, mu)
        got = op.hqs_step(z, y, mu).reshape(-1)
        assert (got - ref).norm() <= 1e-8 * ref.norm()


def test_hqs_step_per_item_mu_and_mask_change_refreshes_the_cache():
    torch.manual_seed(3)
    op = CASSI(torch.rand(5, 6), 2).double()
    shape = (1, 3, 5, 6)
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    y = torch.randn(2, 5, 10, dtype=torch.float64)
    mu = torch.tensor([0.2, 5.0], dtype=torch.float64)
    op.hqs_step(z, y, mu)  # fills the Phi_s cache for the old mask
    op.load_state_dict({"mask": torch.rand(5, 6, dtype=torch.float64)})
    matrix = dense_matrix(op, shape)
    got = op.hqs_step(z, y, mu)
    for i in range(2):
        ref = dense_hqs(matrix, z[i], y[i], float(mu[i]))
        assert (got[i].reshape(-1) - ref).norm() <= 1e-8 * ref.norm()


def test_shifted_mask_energy_is_diag_of_phi_phi_t():
    op = CASSI(torch.rand(4, 5), 2).double()
    matrix = dense_matrix(op, (1, 3, 4, 5))
    diag = torch.diagonal(matrix @ matrix.T)
    like = torch.empty(0, dtype=torch.float64)
    torch.testing.assert_close(op.shifted_mask_energy(3, like).reshape(-1), diag)
    torch.testing.assert_close(matrix @ matrix.T, torch.diag(diag))


def test_simulation_mask_file():
    mask = load_cassi_mask(shared_file("CASSI", "simulation", "mask.mat"))
    assert mask.shape == (256, 256) and mask.dtype == torch.float32
    assert float(mask.min()) > 0 and float(mask.max()) <= 1
    op = CASSI(mask)
    assert op.A(torch.rand(1, 28, 256, 256)).shape == (1, 256, 310)


def test_real_mask_and_measurement_files():
    mask = load_cassi_mask(shared_file("CASSI", "real_TSA", "mask.mat"))
    meas = load_cassi_measurement(shared_file("CASSI", "real_TSA", "measurements", "scene1.mat"))
    assert mask.shape == (660, 660) and meas.shape == (660, 714)
    op = CASSI(mask)
    assert op.bands(meas[None]) == 28
    x0 = op.init(meas[None])
    assert x0.shape == (1, 28, 660, 660)
    assert op.A(x0).shape == (1, 660, 714)


def test_load_cassi_mask_rejects_a_3d_array(tmp_path):
    from scipy.io import savemat

    path = tmp_path / "mask_3d.mat"
    savemat(path, {"mask_3d_shift": torch.rand(4, 6, 2).numpy()})
    with pytest.raises(ValueError, match="expected a 2-D array"):
        load_cassi_mask(path)
    savemat(path, {"a": torch.rand(4, 6).numpy(), "b": torch.rand(4, 6).numpy()})
    with pytest.raises(ValueError, match=r"pass key=\.\.\. \(expected 'mask'\)"):
        load_cassi_mask(path)
    assert load_cassi_mask(path, key="b").shape == (4, 6)
    with pytest.raises(FileNotFoundError, match="no MATLAB file"):
        load_cassi_mask(tmp_path / "missing.mat")


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"expected a 2-D \(H, W\) coded aperture"):
        CASSI(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        CASSI(torch.rand(4, 4), step=0)
    op = CASSI(torch.rand(8, 6), step=2)
    with pytest.raises(ValueError, match=r"expected \(B, C, 8, 6\) to match the mask"):
        op.A(torch.rand(1, 3, 8, 7))
    with pytest.raises(ValueError, match=r"expected \(B, C, 8, 6\)"):
        op.A(torch.rand(3, 8, 6))
    with pytest.raises(ValueError, match=r"expected \(B, 8, 6 \+ 2\*\(C-1\)\)"):
        op.A_adjoint(torch.rand(1, 9, 10))  # mask/measurement height mismatch
    with pytest.raises(ValueError, match=r"expected \(B, 8, 6 \+ 2\*\(C-1\)\)"):
        op.A_adjoint(torch.rand(1, 8, 11))  # width not W + step*(C-1)
    with pytest.raises(ValueError, match=r"iterate has 4 bands: expected \(B, 8, 12\)"):
        op.hqs_step(torch.rand(1, 4, 8, 6), torch.rand(1, 8, 10), 0.1)
    with pytest.raises(ValueError, match=r"expected y of shape \(1, 8, 12\)"):
        op.gradient_step(torch.rand(1, 4, 8, 6), torch.rand(1, 8, 10), 0.1)

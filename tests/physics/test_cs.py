"""Block CS: row counts, conventions, exact adjoint, Woodbury HQS step, ISTA-Net matrices, errors."""

from __future__ import annotations

import pytest
import torch
from physics_testing import assert_adjoint, dense_hqs, dense_matrix, shared_file

from lorun_peft.physics import ISTA_NET_NUM_ROWS, BlockCS, load_ista_net_matrix, num_measurements


def test_num_measurements_is_the_guarded_ceiling():
    # b = 33: the ceiling rule; ISTA-Net's own table differs at 1 %, 4 % and 25 % (see ISTA_NET_NUM_ROWS).
    assert [num_measurements(r, 33) for r in (0.01, 0.04, 0.10, 0.25, 0.30, 0.40)] == [
        11,
        44,
        109,
        273,
        327,
        436,
    ]
    assert [num_measurements(r, 32) for r in (0.01, 0.04, 0.10, 0.25, 0.50)] == [11, 41, 103, 256, 512]
    assert 0.07 * 100 > 7  # float error that a bare ceil would turn into 8 rows
    assert num_measurements(0.07, 10) == 7
    assert num_measurements(1.0, 32) == 1024
    assert BlockCS(0.25, 33).num_rows == 273
    assert BlockCS(0.25, 33, num_rows=ISTA_NET_NUM_ROWS[25]).Phi.shape == (272, 1089)


def test_forward_is_phi_times_row_major_blocks():
    op = BlockCS(0.5, block_size=4, channels=2).double()
    x = torch.randn(3, 2, 8, 12, dtype=torch.float64)
    y = op.A(x)
    assert y.shape == (3, 2 * 8, 2, 3)
    block = x[1, 1, 4:8, 8:12].reshape(-1)  # channel 1, block row 1, block column 2
    torch.testing.assert_close(y[1, 8:16, 1, 2], op.Phi @ block)


def test_unaligned_images_are_zero_padded_and_adjoint_returns_the_padded_grid():
    op = BlockCS(0.3, block_size=8).double()
    x = torch.randn(2, 1, 13, 19, dtype=torch.float64)
    padded = torch.zeros(2, 1, 16, 24, dtype=torch.float64)
    padded[..., :13, :19] = x
    torch.testing.assert_close(op.A(x), op.A(padded))
    assert op.pad(x).shape == (2, 1, 16, 24)
    assert op.init(op.A(x)).shape == (2, 1, 16, 24)
    assert op.measurement_shape((2, 1, 13, 19)) == (2, op.num_rows, 2, 3)
    assert op.image_shape(op.measurement_shape((2, 1, 13, 19))) == (2, 1, 16, 24)


@pytest.mark.parametrize(
    ("block_size", "ratio", "size"),
    [(32, 0.1, (64, 96)), (32, 0.25, (70, 45)), (33, 0.25, (66, 99)), (33, 0.04, (50, 35))],
)
def test_adjoint(block_size, ratio, size):
    gen = torch.Generator().manual_seed(block_size + len(size))
    op = BlockCS(ratio, block_size=block_size, channels=2).double()
    assert_adjoint(op, torch.randn(2, 2, *size, dtype=torch.float64, generator=gen), gen)


def test_init_is_the_adjoint():
    op = BlockCS(0.25, block_size=8).double()
    y = torch.randn(2, op.num_rows, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(op.init(y), op.A_adjoint(y))


@pytest.mark.parametrize(
    ("block_size", "ratio", "shape"), [(4, 0.3, (1, 2, 8, 12)), (33, 0.25, (1, 1, 33, 33))]
)
def test_hqs_step_matches_dense_solve(block_size, ratio, shape):
    torch.manual_seed(0)
    op = BlockCS(ratio, block_size=block_size, channels=shape[1]).double()
    matrix = dense_matrix(op, shape)
    z = torch.randn(shape, dtype=torch.float64)
    y = torch.randn(op.measurement_shape(shape), dtype=torch.float64)
    for mu in (0.05, 1.0):
        got = op.hqs_step(z, y, mu).reshape(-1)
        ref = dense_hqs(matrix, z, y, mu)
        assert (got - ref).norm() <= 1e-8 * ref.norm()


def test_hqs_step_with_a_per_item_mu():
    torch.manual_seed(1)
    op = BlockCS(0.25, block_size=4, channels=1).double()
    shape = (1, 1, 8, 8)
    matrix = dense_matrix(op, shape)
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = torch.randn(2, op.num_rows, 2, 2, dtype=torch.float64)
    mu = torch.tensor([0.1, 3.0], dtype=torch.float64)
    got = op.hqs_step(z, y, mu)
    for i in range(2):
        ref = dense_hqs(matrix, z[i], y[i], float(mu[i]))
        assert (got[i].reshape(-1) - ref).norm() <= 1e-8 * ref.norm()


def test_fixed_matrix_is_a_buffer_and_learnable_one_a_parameter():
    matrix = torch.randn(4, 16)
    fixed = BlockCS(0.25, block_size=4, matrix=matrix)
    assert not fixed.learnable and "Phi" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    torch.testing.assert_close(fixed.Phi, matrix)
    tuned = BlockCS(0.25, block_size=4, matrix=matrix, learnable=True)
    assert [name for name, _ in tuned.named_parameters()] == ["Phi"]
    assert BlockCS(0.25, block_size=4).learnable


def test_random_init_has_unit_row_norms_on_average():
    torch.manual_seed(0)
    op = BlockCS(0.5, block_size=32)
    assert abs(float(op.Phi.detach().norm(dim=1).square().mean()) - 1.0) < 0.05


def test_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        op = BlockCS(0.25, block_size=8).to(dtype)
        x = torch.rand(1, 1, 16, 16, dtype=dtype)
        y = op.A(x)
        assert y.dtype == dtype and op.hqs_step(x, y, 0.5).dtype == dtype


@pytest.mark.parametrize("percent", sorted(ISTA_NET_NUM_ROWS)[:-1])
def test_load_ista_net_matrix(percent):
    path = shared_file("ISTA_Net_phi", f"phi_0_{percent}_1089.mat")
    op = load_ista_net_matrix(path)
    assert (op.block_size, op.num_rows, op.ratio) == (33, ISTA_NET_NUM_ROWS[percent], percent / 100)
    assert not op.learnable and not list(op.parameters())
    phi = op.Phi.double()
    torch.testing.assert_close(phi @ phi.T, torch.eye(op.num_rows, dtype=torch.float64), atol=1e-4, rtol=0)
    assert op.A(torch.rand(1, 1, 66, 33)).shape == (1, op.num_rows, 2, 1)


def test_load_ista_net_matrix_needs_a_ratio_for_other_names(tmp_path):
    path = shared_file("ISTA_Net_phi", "phi_0_25_1089.mat")
    renamed = tmp_path / "matrix.mat"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"phi_0_\{R\}_1089\.mat"):
        load_ista_net_matrix(renamed)
    assert load_ista_net_matrix(renamed, ratio=0.25).num_rows == 272


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        BlockCS(0.0)
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        BlockCS(1.5)
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        BlockCS(0.1, block_size=0)
    with pytest.raises(ValueError, match=r"expected \(n, 16\) for 4x4 blocks"):
        BlockCS(0.25, block_size=4, matrix=torch.randn(4, 15))
    with pytest.raises(ValueError, match="expected about ratio"):
        BlockCS(0.5, block_size=4, matrix=torch.randn(4, 16))
    with pytest.raises(ValueError, match=r"num_rows must be an integer in \[1, 16\]"):
        BlockCS(0.5, block_size=4, num_rows=17)
    op = BlockCS(0.25, block_size=4, channels=1)
    with pytest.raises(ValueError, match=r"expected \(B, 1, H, W\) \(1 channel\)"):
        op.A(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected \(B, 1, H, W\)"):
        op.A(torch.rand(8, 8))
    with pytest.raises(ValueError, match=r"expected \(B, 4, h, w\)"):
        op.A_adjoint(torch.rand(1, 5, 2, 2))
    with pytest.raises(ValueError, match="expected multiples of block_size=4"):
        op.hqs_step(torch.rand(1, 1, 6, 8), torch.rand(1, 4, 2, 2), 0.1)
    with pytest.raises(ValueError, match=r"expected y of shape \(1, 4, 2, 2\)"):
        op.gradient_step(torch.rand(1, 1, 8, 8), torch.rand(1, 4, 3, 2), 0.1)


def test_derive_sampling_matrix_keeps_the_strongest_directions_for_fewer_rows():
    from lorun_peft.physics import derive_sampling_matrix

    phi = torch.randn(12, 64, dtype=torch.float64)
    fewer = derive_sampling_matrix(phi, 5)
    assert fewer.shape == (5, 64) and fewer.dtype == torch.float64
    _, s, vh = torch.linalg.svd(phi, full_matrices=False)
    torch.testing.assert_close(fewer, s[:5, None] * vh[:5])
    # its rows lie in phi's row space: the projection onto it changes nothing
    projector = vh.T @ vh
    torch.testing.assert_close(fewer @ projector, fewer)
    same = derive_sampling_matrix(phi, 12)
    torch.testing.assert_close(same.T @ same, phi.T @ phi)  # the same measurement Gram matrix


def test_derive_sampling_matrix_adds_orthogonal_rows_for_more_rows():
    from lorun_peft.physics import derive_sampling_matrix

    phi = torch.randn(10, 64)
    generator = torch.Generator().manual_seed(0)
    more = derive_sampling_matrix(phi, 30, generator)
    assert more.shape == (30, 64) and more.dtype == torch.float32
    assert torch.equal(more[:10], phi)
    extra = more[10:].double()
    torch.testing.assert_close(
        extra @ phi.double().T, torch.zeros(20, 10, dtype=torch.float64), atol=1e-5, rtol=0
    )
    median = torch.linalg.svdvals(phi.double()).median()
    torch.testing.assert_close(
        extra @ extra.T, median**2 * torch.eye(20, dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert torch.linalg.matrix_rank(more.double()) == 30


@pytest.mark.parametrize(
    ("phi", "rows", "message"),
    [
        (torch.randn(4, 4, 4), 2, "2-D"),
        (torch.randn(4, 16), 0, r"num_rows must be an integer in \[1, 16\]"),
        (torch.randn(4, 16), 17, r"num_rows must be an integer in \[1, 16\]"),
        (torch.randn(4, 16), 2.0, "num_rows must be an integer"),
    ],
)
def test_derive_sampling_matrix_rejects_bad_input(phi, rows, message):
    from lorun_peft.physics import derive_sampling_matrix

    with pytest.raises(ValueError, match=message):
        derive_sampling_matrix(phi, rows)

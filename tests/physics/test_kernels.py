"""Kernel generators and the .mat kernel loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import savemat

from lorun_peft.physics import (
    KERNELS_12_NAMES,
    gaussian_kernel,
    load_bicubic_kernels,
    load_kernel_cell,
    load_kernels_12,
    motion_kernel,
    synthetic_kernels_12,
)


def centroid(kernel: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(*(torch.arange(n, dtype=kernel.dtype) for n in kernel.shape), indexing="ij")
    return float((kernel * rows).sum()), float((kernel * cols).sum())


def test_generated_kernels_are_normalised_and_centred_on_size_over_2():
    for kernel in (
        gaussian_kernel(25, 2.0),
        gaussian_kernel(25, (3.0, 1.0), 0.7),
        motion_kernel(25, 11.0, 1.1),
    ):
        assert kernel.shape == (25, 25) and float(kernel.min()) >= 0
        assert abs(float(kernel.sum()) - 1) < 1e-6
        assert np.allclose(centroid(kernel), (12, 12), atol=1e-4)


def test_anisotropic_gaussian_is_elongated_along_its_angle():
    horizontal = gaussian_kernel(25, (4.0, 1.0), 0.0)
    assert float(horizontal[12, 16]) > 10 * float(horizontal[16, 12])
    vertical = gaussian_kernel(25, (4.0, 1.0), np.pi / 2)
    torch.testing.assert_close(vertical, horizontal.T, atol=1e-7, rtol=0)


def test_motion_kernel_lies_on_its_line():
    kernel = motion_kernel(15, 8.0, 0.0)
    assert float(kernel[7].sum()) == pytest.approx(1.0)  # horizontal line through the centre row
    assert int((kernel[7] > 0).sum()) == 9


def test_synthetic_kernels_12_follow_the_published_order():
    kernels = synthetic_kernels_12()
    assert kernels.shape == (12, 25, 25) and len(KERNELS_12_NAMES) == 12
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(12))
    isotropic = kernels[:4]
    torch.testing.assert_close(isotropic, isotropic.transpose(1, 2))
    widths = [float(k[12].max()) for k in isotropic]
    assert widths == sorted(widths, reverse=True)  # sigma 0.7 < 1.2 < 1.6 < 2.0: peaks decrease


def test_generator_arguments_are_checked():
    with pytest.raises(ValueError, match="positive sigmas"):
        gaussian_kernel(5, 0.0)
    with pytest.raises(ValueError, match="0 <= length < size"):
        motion_kernel(5, 6.0)


def test_kernel_cell_loaders_on_written_files(tmp_path):
    cell = np.empty((1, 3), dtype=object)
    for i in range(3):
        cell[0, i] = np.full((5, 5), 1 / 25, dtype=np.float32)
    path = tmp_path / "bicubic.mat"
    savemat(path, {"kernels": cell})
    assert [tuple(k.shape) for k in load_kernel_cell(path)] == [(5, 5)] * 3
    assert sorted(load_bicubic_kernels(path)) == [2, 3, 4]
    with pytest.raises(ValueError, match="expected 12 kernels of one size"):
        load_kernels_12(path)
    savemat(path, {"kernels": np.ones((5, 5))})
    with pytest.raises(ValueError, match="expected a cell of kernels"):
        load_kernel_cell(path)
    savemat(path, {"other": np.ones((5, 5))})
    with pytest.raises(ValueError, match="has no variable 'kernels'"):
        load_kernel_cell(path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gaussian_kernel(5, float("nan")),
        lambda: gaussian_kernel(5, float("inf")),
        lambda: gaussian_kernel(5, (1.0, float("nan"))),
        lambda: gaussian_kernel(5, (1.0, 2.0), angle=float("nan")),
        lambda: motion_kernel(9, float("nan")),
        lambda: motion_kernel(9, 3.0, angle=float("inf")),
    ],
)
def test_kernel_generators_refuse_non_finite_parameters(make) -> None:
    with pytest.raises(ValueError, match="finite"):
        make()

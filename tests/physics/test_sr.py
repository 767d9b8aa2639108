"""Blur + s-fold downsampling: USRNet conventions, exact adjoint, FFT HQS step, kernel files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from physics_testing import assert_adjoint, dense_hqs, dense_matrix, shared_file
from scipy import ndimage

from lorun_peft.physics import (
    BlurDownsample,
    gaussian_kernel,
    kernel_to_otf,
    load_bicubic_kernels,
    load_kernels_12,
    motion_kernel,
    synthetic_kernels_12,
)

SCALES = (2, 3, 4)


def real_kernels() -> list[torch.Tensor]:
    kernels = list(load_kernels_12(shared_file("kernels", "kernels_12.mat")))
    return kernels + list(load_bicubic_kernels(shared_file("kernels", "kernels_bicubicx234.mat")).values())


def test_forward_matches_wrapped_convolution_then_first_pixel_sampling():
    kernel = gaussian_kernel(7, (2.0, 0.8), 0.5).double()
    kernel[0, 1] += 0.05  # break the symmetry so that a flipped kernel would be caught
    kernel /= kernel.sum()
    x = torch.randn(1, 1, 24, 36, dtype=torch.float64)
    for s in SCALES:
        op = BlurDownsample(kernel, s).double()
        ref = ndimage.convolve(x[0, 0].numpy(), kernel.numpy(), mode="wrap")[::s, ::s]
        np.testing.assert_allclose(op.A(x)[0, 0].numpy(), ref, rtol=0, atol=1e-12)


def test_even_kernel_is_centred_at_size_over_2():
    kernel = torch.zeros(4, 6, dtype=torch.float64)
    kernel[2, 3] = 1.0  # the centre pixel (kh//2, kw//2): no shift
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(BlurDownsample(kernel, 2).double().A(x), x[..., ::2, ::2])
    kernel = torch.zeros(4, 6, dtype=torch.float64)
    kernel[3, 3] = 1.0  # one row below the centre: y[i] = x[i - 1] (circularly)
    torch.testing.assert_close(BlurDownsample(kernel, 1).double().A(x), torch.roll(x, 1, dims=-2))


@pytest.mark.parametrize("scale", SCALES)
def test_adjoint_with_synthetic_kernels(scale):
    gen = torch.Generator().manual_seed(scale)
    for kernel in synthetic_kernels_12():
        op = BlurDownsample(kernel, scale).double()
        assert_adjoint(op, torch.randn(2, 3, 48, 36, dtype=torch.float64, generator=gen), gen)


@pytest.mark.parametrize("scale", SCALES)
def test_adjoint_with_the_published_kernels(scale):
    gen = torch.Generator().manual_seed(scale)
    for kernel in real_kernels():
        op = BlurDownsample(kernel, scale).double()
        assert_adjoint(op, torch.randn(1, 3, 48, 36, dtype=torch.float64, generator=gen), gen)


def test_adjoint_with_an_even_kernel_and_scale_one():
    gen = torch.Generator().manual_seed(0)
    kernel = motion_kernel(8, 5.0, 0.4)
    for scale in (1, 2, 4):
        assert_adjoint(
            BlurDownsample(kernel, scale).double(), torch.randn(2, 1, 16, 24, dtype=torch.float64), gen
        )


@pytest.mark.parametrize("scale", SCALES)
def test_hqs_step_matches_dense_solve(scale):
    torch.manual_seed(scale)
    kernels = synthetic_kernels_12()
    shape = (1, 1, 36, 36)
    for kernel in (kernels[2], kernels[5], kernels[10], motion_kernel(6, 3.0, 1.0)):
        op = BlurDownsample(kernel, scale).double()
        matrix = dense_matrix(op, shape)
        z = torch.randn(shape, dtype=torch.float64)
        y = torch.randn(op.measurement_shape(shape), dtype=torch.float64)
        for mu in (0.01, 0.5):
            ref = dense_hqs(matrix, z, y, mu)
            got = op.hqs_step(z, y, mu).reshape(-1)
            assert (got - ref).norm() <= 1e-8 * ref.norm()


@pytest.mark.parametrize("source", ["synthetic", "bicubic"])
def test_hqs_step_with_per_item_mu_matches_dense_solve(source):
    if source == "bicubic":
        kernel = load_bicubic_kernels(shared_file("kernels", "kernels_bicubicx234.mat"))[3]
    else:
        kernel = gaussian_kernel(25, (2.5, 1.0), 0.9)
    torch.manual_seed(0)
    op = BlurDownsample(kernel, 3).double()
    shape = (1, 1, 27, 30)
    matrix = dense_matrix(op, shape)
    z = torch.randn(2, 1, 27, 30, dtype=torch.float64)
    y = torch.randn(2, 1, 9, 10, dtype=torch.float64)
    mu = torch.tensor([0.05, 2.0], dtype=torch.float64)
    got = op.hqs_step(z, y, mu)
    for i in range(2):
        ref = dense_hqs(matrix, z[i], y[i], float(mu[i]))
        assert (got[i].reshape(-1) - ref).norm() <= 1e-8 * ref.norm()


def test_init_is_nearest_upsampling():
    op = BlurDownsample(gaussian_kernel(5, 1.0), 3)
    y = torch.rand(2, 3, 4, 5)
    x0 = op.init(y)
    assert x0.shape == (2, 3, 12, 15) == op.image_shape(tuple(y.shape))
    torch.testing.assert_close(x0[..., ::3, ::3], y)
    torch.testing.assert_close(x0[..., 2::3, 1::3], y)


def test_published_kernel_files():
    kernels = load_kernels_12(shared_file("kernels", "kernels_12.mat"))
    assert kernels.shape == (12, 25, 25) and kernels.dtype == torch.float32
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(12), atol=1e-6, rtol=0)
    assert float(kernels.min()) >= 0
    bicubic = load_bicubic_kernels(shared_file("kernels", "kernels_bicubicx234.mat"))
    assert sorted(bicubic) == [2, 3, 4]
    for kernel in bicubic.values():
        assert kernel.shape == (25, 25) and float(kernel.min()) < 0  # negative lobes
        assert abs(float(kernel.sum()) - 1) < 2e-4
        BlurDownsample(kernel, 2)  # accepted as given, within the sum tolerance


def test_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        op = BlurDownsample(gaussian_kernel(9, 1.2), 2).to(dtype)
        x = torch.rand(1, 3, 16, 16, dtype=dtype)
        y = op.A(x)
        assert y.dtype == dtype and op.A_adjoint(y).dtype == dtype and op.hqs_step(x, y, 0.1).dtype == dtype


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"expected a 2-D \(kh, kw\) kernel"):
        BlurDownsample(torch.ones(1, 3, 3) / 9, 2)
    with pytest.raises(ValueError, match=r"sums to 2, expected 1 \(within 0\.001\)"):
        BlurDownsample(torch.ones(2, 2) / 2, 2)
    with pytest.raises(ValueError, match=r"scale must be a positive integer \(2, 3, 4, \.\.\.\)"):
        BlurDownsample(gaussian_kernel(5, 1.0), 2.5)
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        BlurDownsample(gaussian_kernel(5, 1.0), 0)
    assert BlurDownsample(gaussian_kernel(5, 1.0), 2.0).scale == 2
    op = BlurDownsample(gaussian_kernel(5, 1.0), 4)
    with pytest.raises(ValueError, match="must be a multiple of the scale 4"):
        op.A(torch.rand(1, 1, 16, 18))
    with pytest.raises(ValueError, match=r"smaller than the kernel \(5, 5\)"):
        op.A(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\)"):
        op.A(torch.rand(16, 16))
    with pytest.raises(ValueError, match=r"expected \(B, C, H/4, W/4\)"):
        op.A_adjoint(torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"expected y of shape \(1, 1, 4, 4\)"):
        op.hqs_step(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 4, 5), 0.1)


def test_hqs_step_equals_usrnet_data_module_form():
    """USRNet: FR = conj(FB) F(up y) + mu F(z); x = ifft((FR - conj(FB) tile(FBR / (invW + mu))) / mu)."""
    torch.manual_seed(5)
    s, height, width = 3, 24, 30
    kernel = gaussian_kernel(9, (2.0, 1.0), 0.4).double()
    op = BlurDownsample(kernel, s)
    z = torch.randn(2, 3, height, width, dtype=torch.float64)
    y = torch.randn(2, 3, height // s, width // s, dtype=torch.float64)
    mu = 0.07
    fb = kernel_to_otf(kernel, (height, width))
    up = torch.zeros_like(z)
    up[..., ::s, ::s] = y
    fr = fb.conj() * torch.fft.fft2(up) + mu * torch.fft.fft2(z)

    def alias_mean(t):
        return t.reshape(*t.shape[:-2], s, height // s, s, width // s).mean(dim=(-4, -2))

    fbr = alias_mean(fb * fr)
    inv_w = alias_mean(fb.abs().square())
    x = torch.fft.ifft2((fr - fb.conj() * (fbr / (inv_w + mu)).repeat(1, 1, s, s)) / mu).real
    torch.testing.assert_close(op.hqs_step(z, y, mu), x, rtol=1e-9, atol=1e-11)

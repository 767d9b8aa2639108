"""The general metrics: PSNR and SSIM on any value range, and the input checks every metric shares.

:func:`psnr` and :func:`ssim` (Gaussian or uniform window, valid or zero padding) are the building
blocks; the task protocols of :mod:`.protocols` are these same computations with the field's channel,
range, rounding and border choices fixed. The private helpers here (pair validation, float64
conversion, shaving, reduction, the SSIM map) are shared with :mod:`.protocols` so that every metric
checks and reduces its inputs the same way.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "none"]

#: SSIM constants of Wang et al. (2004): C1 = (K1 L)^2, C2 = (K2 L)^2 with L the data range.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Gaussian window of Wang et al.: sigma 1.5, truncated at 3.5 sigma -> 11 x 11 (as scikit-image).
SSIM_GAUSSIAN_SIGMA = 1.5
SSIM_GAUSSIAN_TRUNCATE = 3.5
#: scikit-image's default uniform window (used by the ISTA-Net family through ``compare_ssim``).
SSIM_UNIFORM_SIZE = 7


def _as_float64(x: Tensor) -> Tensor:
    """float64 copy for accurate sums; MPS has no float64, so such tensors are measured on the CPU."""
    if x.device.type == "mps":
        x = x.cpu()
    return x.to(torch.float64)


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Validate a prediction/target pair; return them as (B, C, H, W) float64 and whether batched."""
    for name, value in (("pred", pred), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (B, C, H, W) or (C, H, W), got {type(value)}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (B, C, H, W) or (C, H, W), got shape {tuple(pred.shape)}")
    if pred.numel() == 0:
        raise ValueError(f"expected non-empty images, got shape {tuple(pred.shape)}")
    batched = pred.ndim == 4
    if not batched:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    return _as_float64(pred), _as_float64(target.to(pred.device)), batched


def _check_data_range(data_range: float) -> float:
    if isinstance(data_range, Tensor):
        data_range = float(data_range)
    if not math.isfinite(data_range) or data_range <= 0:
        raise ValueError(
            f"data_range must be a positive number (1.0 for [0, 1], 255 for [0, 255]), got {data_range}"
        )
    return float(data_range)


def _shave(x: Tensor, shave: int) -> Tensor:
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ValueError(
            f"shave must be a non-negative int (border pixels removed on each side), got {shave!r}"
        )
    if shave == 0:
        return x
    height, width = x.shape[-2:]
    if 2 * shave >= min(height, width):
        raise ValueError(
            f"shave={shave} removes the whole {height}x{width} image; expected 2*shave < min(H, W)"
        )
    return x[..., shave:-shave, shave:-shave]


def _reduce(values: Tensor, reduction: Reduction, batched: bool) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values if batched else values[0]
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _psnr_per_image(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    mse = (pred - target).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    shave: int = 0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB, MSE over (C, H, W).

    Matches ``skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=data_range)`` per
    image. Identical images give ``inf``.

    Args:
        pred, target: ``(B, C, H, W)`` or ``(C, H, W)`` on the scale ``[0, data_range]``.
        data_range: the peak value (1.0 for [0, 1], 255 for [0, 255]).
        shave: border pixels removed on each side before measuring.
        reduction: ``"mean"`` over images, or ``"none"`` for a ``(B,)`` tensor.
    """
    data_range = _check_data_range(data_range)
    pred, target, batched = _check_pair(pred, target)
    values = _psnr_per_image(_shave(pred, shave), _shave(target, shave), data_range)
    return _reduce(values, reduction, batched)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(SSIM_GAUSSIAN_TRUNCATE * SSIM_GAUSSIAN_SIGMA + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-(offsets**2) / (2 * SSIM_GAUSSIAN_SIGMA**2))
    return window / window.sum()


def _ssim_map(
    pred: Tensor,
    target: Tensor,
    data_range: float,
    window: Literal["gaussian", "uniform"],
    padding: Literal["valid", "zeros"],
) -> Tensor:
    """SSIM index map ``(B, C, H', W')`` from local (separably filtered) statistics."""
    if window == "gaussian":
        taps = _gaussian_window(pred.dtype, pred.device)
        cov_norm = 1.0  # population covariance (Wang et al.)
    elif window == "uniform":
        taps = torch.full((SSIM_UNIFORM_SIZE,), 1.0 / SSIM_UNIFORM_SIZE, dtype=pred.dtype, device=pred.device)
        n = SSIM_UNIFORM_SIZE**2
        cov_norm = n / (n - 1)  # scikit-image's default sample covariance
    else:
        raise ValueError(f"window must be 'gaussian' or 'uniform', got {window!r}")
    if padding not in ("valid", "zeros"):
        raise ValueError(f"padding must be 'valid' or 'zeros', got {padding!r}")
    size = taps.numel()
    batch, channels, height, width = pred.shape
    if padding == "valid" and min(height, width) < size:
        raise ValueError(
            f"SSIM with a {size}x{size} window needs images of at least {size}x{size}, got {height}x{width}"
        )
    pad = size // 2 if padding == "zeros" else 0

    stack = torch.cat([pred, target, pred * pred, target * target, pred * target]).reshape(
        -1, 1, height, width
    )
    stack = F.conv2d(stack, taps.view(1, 1, size, 1), padding=(pad, 0))
    stack = F.conv2d(stack, taps.view(1, 1, 1, size), padding=(0, pad))
    mu_p, mu_t, e_pp, e_tt, e_pt = stack.reshape(5, batch, channels, *stack.shape[-2:])

    var_p = cov_norm * (e_pp - mu_p * mu_p)
    var_t = cov_norm * (e_tt - mu_t * mu_t)
    cov_pt = cov_norm * (e_pt - mu_p * mu_t)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mu_p * mu_t + c1) * (2 * cov_pt + c2)
    denominator = (mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2)
    return numerator / denominator


def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    shave: int = 0,
    window: Literal["gaussian", "uniform"] = "gaussian",
    padding: Literal["valid", "zeros"] = "valid",
    reduction: Reduction = "mean",
) -> Tensor:
    """Structural similarity (Wang et al., 2004), averaged over pixels and channels of each image.

    ``window="gaussian"``: 11x11 Gaussian, sigma 1.5, population covariance, K1=0.01, K2=0.03 --
    the same number as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=...)``.
    ``window="uniform"``: 7x7 box with sample covariance -- scikit-image's defaults, which the
    ISTA-Net family reports for CS.

    ``padding="valid"`` averages only where the window lies inside the image (scikit-image crops
    that border). ``padding="zeros"`` zero-pads and averages the full map, as ``pytorch-ssim``
    and therefore MST/DAUHST do for CASSI. (torchmetrics' SSIM reflect-pads and averages the full
    map, a third variant that differs from both in the third decimal on real images, so it is
    not used.)

    Args:
        pred, target: ``(B, C, H, W)`` or ``(C, H, W)`` on the scale ``[0, data_range]``.
        data_range: dynamic range L of the images (C1 = (0.01 L)^2, C2 = (0.03 L)^2).
        shave: border pixels removed on each side before measuring.
        reduction: ``"mean"`` over images, or ``"none"`` for a ``(B,)`` tensor.
    """
    data_range = _check_data_range(data_range)
    pred, target, batched = _check_pair(pred, target)
    ssim_map = _ssim_map(_shave(pred, shave), _shave(target, shave), data_range, window, padding)
    return _reduce(ssim_map.mean(dim=(1, 2, 3)), reduction, batched)

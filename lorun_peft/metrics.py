"""PSNR and SSIM exactly as the image-restoration literature computes them.

Published numbers are only comparable when the metric follows the same protocol: which channel,
which value range, how many border pixels are shaved, whether images are quantised first, which
SSIM window and how its borders are treated. This module implements the general metrics
(:func:`psnr`, :func:`ssim`) and one helper per task protocol, each named after the code base it
reproduces:

* CS (ISTA-Net family): :func:`cs_psnr`, :func:`cs_ssim` -- gray images on [0, 255], prediction
  clipped to [0, 1] first; SSIM as ``skimage.metrics.structural_similarity`` defaults.
* SR (KAIR / USRNet): :func:`psnr_y`, :func:`ssim_y` -- ITU-R BT.601 luma (MATLAB ``rgb2ycbcr``)
  on [0, 255] with ``scale`` border pixels shaved.
* CASSI (TSA-Net / MST / DAUHST): :func:`cassi_psnr`, :func:`cassi_ssim` -- per-band values
  averaged over the bands, with MST's x256 rounding, or plain floats.

Every function takes ``(B, C, H, W)`` or ``(C, H, W)`` tensors, computes in float64 and returns a
float64 tensor: one value per image with ``reduction="none"``, their mean with ``"mean"`` (the
field's "average PSNR over the test set"). Unbatched ``(C, H, W)`` inputs give a 0-d tensor.
The formulas are written out in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "rgb_to_y",
    "psnr",
    "ssim",
    "psnr_y",
    "ssim_y",
    "cs_psnr",
    "cs_ssim",
    "cassi_psnr",
    "cassi_ssim",
]

Reduction = Literal["mean", "none"]

#: MATLAB ``rgb2ycbcr`` luma row for R, G, B in [0, 1], giving Y on [0, 255] (offset 16 added).
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0

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


def rgb_to_y(img: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """ITU-R BT.601 luma, as MATLAB ``rgb2ycbcr`` computes it, on [0, 255] (range 16..235).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1]; integer (uint8) inputs
    are read as [0, 255]. No rounding (see ``quantize`` in :func:`psnr_y` for that).

    Args:
        img: tensor ``(B, 3, H, W)`` or ``(3, H, W)``, or a numpy array ``(H, W, 3)`` (channel last,
            as images are stored on disk).

    Returns:
        float64 Y: tensor ``(B, 1, H, W)`` / ``(1, H, W)``, or numpy ``(H, W)``.
    """
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"expected a numpy RGB image of shape (H, W, 3), got shape {img.shape}")
        scale = 255.0 if np.issubdtype(img.dtype, np.integer) else 1.0
        weights = np.asarray(BT601_Y_WEIGHTS, dtype=np.float64)
        return img.astype(np.float64) @ weights / scale + BT601_Y_OFFSET
    if not isinstance(img, Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(img)}")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(
            f"expected an RGB tensor of shape (B, 3, H, W) or (3, H, W), got shape {tuple(img.shape)}"
        )
    scale = 1.0 if img.is_floating_point() else 255.0
    x = _as_float64(img) / scale
    weights = torch.tensor(BT601_Y_WEIGHTS, dtype=torch.float64, device=x.device).view(3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True) + BT601_Y_OFFSET


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


def _luma_255(img: Tensor, quantize: bool) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W) Y (C=3) or gray (C=1) on [0, 255]."""
    channels = img.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"expected RGB (C=3) or gray (C=1) images for a Y-channel metric, got C={channels}")
    if not quantize:
        return img * 255.0 if channels == 1 else rgb_to_y(img)
    levels = torch.round(img.clamp(0.0, 1.0) * 255.0)
    if channels == 1:
        return levels
    # Exact integers: (Y - 16) * 255000 = 65481 R + 128553 G + 24966 B for R, G, B in 0..255, rounded
    # half up like MATLAB's uint8 conversion, so ties (e.g. RGB 146, 124, 97 -> Y = 125.5) never
    # depend on float summation order.
    weights = torch.tensor([round(w * 1000) for w in BT601_Y_WEIGHTS], dtype=torch.int64, device=img.device)
    numerator = (levels.to(torch.int64) * weights.view(3, 1, 1)).sum(dim=1, keepdim=True)
    y = torch.div(2 * numerator + 255000, 510000, rounding_mode="floor") + int(BT601_Y_OFFSET)
    return y.to(torch.float64)


def psnr_y(
    pred: Tensor,
    target: Tensor,
    *,
    shave: int = 0,
    quantize: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """SR protocol (KAIR / USRNet): PSNR of the BT.601 Y channel on [0, 255], ``shave`` px removed.

    Pass ``shave=scale``. Gray (C=1) inputs are measured as they are. ``quantize=True`` first clips
    and rounds to 8 bits and rounds Y to an integer (half up, as MATLAB's uint8 ``rgb2ycbcr``), as
    KAIR does when it measures saved uint8 images; the default keeps floats.

    Args:
        pred, target: ``(B, 3, H, W)``, ``(B, 1, H, W)`` or unbatched, in [0, 1].
    """
    pred, target, batched = _check_pair(pred, target)
    values = _psnr_per_image(
        _shave(_luma_255(pred, quantize), shave), _shave(_luma_255(target, quantize), shave), 255.0
    )
    return _reduce(values, reduction, batched)


def ssim_y(
    pred: Tensor,
    target: Tensor,
    *,
    shave: int = 0,
    quantize: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """SR protocol: Gaussian SSIM (Wang et al.) of the Y channel on [0, 255], ``shave`` px removed.

    Same inputs and options as :func:`psnr_y`; SSIM as :func:`ssim` with ``data_range=255``.
    """
    pred, target, batched = _check_pair(pred, target)
    ssim_map = _ssim_map(
        _shave(_luma_255(pred, quantize), shave),
        _shave(_luma_255(target, quantize), shave),
        255.0,
        "gaussian",
        "valid",
    )
    return _reduce(ssim_map.mean(dim=(1, 2, 3)), reduction, batched)


def _check_gray(pred: Tensor) -> None:
    if pred.shape[1] != 1:
        raise ValueError(
            f"the CS protocol measures gray (Y) images of shape (B, 1, H, W), got C={pred.shape[1]}; "
            "convert colour images first (e.g. rgb_to_y(img) / 255)"
        )


def cs_psnr(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """CS protocol (ISTA-Net, ISTA-Net+, OPINE-Net, ...): gray PSNR on [0, 255].

    The prediction is clipped to [0, 1], both images are scaled by 255 and
    ``PSNR = 20 log10(255 / sqrt(MSE))`` (no rounding, no shave).

    Args:
        pred, target: ``(B, 1, H, W)`` or ``(1, H, W)`` in [0, 1].
    """
    pred, target, batched = _check_pair(pred, target)
    _check_gray(pred)
    values = _psnr_per_image(pred.clamp(0.0, 1.0) * 255.0, target * 255.0, 255.0)
    return _reduce(values, reduction, batched)


def cs_ssim(
    pred: Tensor,
    target: Tensor,
    *,
    window: Literal["gaussian", "uniform"] = "uniform",
    reduction: Reduction = "mean",
) -> Tensor:
    """CS protocol SSIM on [0, 255] with the prediction clipped to [0, 1].

    The ISTA-Net family calls ``skimage`` ``compare_ssim(x * 255, ref, data_range=255)`` with its
    defaults, i.e. a 7x7 uniform window with sample covariance: ``window="uniform"`` (default)
    reproduces that. ``window="gaussian"`` gives the Wang et al. 11x11 Gaussian SSIM instead.
    """
    pred, target, batched = _check_pair(pred, target)
    _check_gray(pred)
    ssim_map = _ssim_map(pred.clamp(0.0, 1.0) * 255.0, target * 255.0, 255.0, window, "valid")
    return _reduce(ssim_map.mean(dim=(1, 2, 3)), reduction, batched)


def cassi_psnr(
    pred: Tensor,
    target: Tensor,
    *,
    protocol: Literal["mst", "float"] = "mst",
    reduction: Reduction = "mean",
) -> Tensor:
    """CASSI protocol: PSNR of each spectral band, averaged over the bands.

    ``protocol="mst"`` (TSA-Net / MST / DAUHST simulation tables): both cubes are mapped to
    ``round(x * 256)`` -- no clipping -- and each band scores ``10 log10(255^2 / MSE_c)``.
    ``protocol="float"``: each band scores ``10 log10(1 / MSE_c)`` on the unrounded [0, 1] values.

    Args:
        pred, target: ``(B, C, H, W)`` or ``(C, H, W)`` cubes in [0, 1], C bands.
    """
    pred, target, batched = _check_pair(pred, target)
    if protocol == "mst":
        pred, target, peak = torch.round(pred * 256.0), torch.round(target * 256.0), 255.0
    elif protocol == "float":
        peak = 1.0
    else:
        raise ValueError(f"protocol must be 'mst' or 'float', got {protocol!r}")
    mse = (pred - target).square().mean(dim=(2, 3))
    values = (10.0 * torch.log10(peak**2 / mse)).mean(dim=1)
    return _reduce(values, reduction, batched)


def cassi_ssim(
    pred: Tensor,
    target: Tensor,
    *,
    protocol: Literal["mst", "valid"] = "mst",
    reduction: Reduction = "mean",
) -> Tensor:
    """CASSI protocol: Gaussian SSIM (11x11, sigma 1.5, data range 1) per band, averaged over bands.

    ``protocol="mst"``: MST's ``torch_ssim`` (pytorch-ssim): zero padding, full map averaged, on
    the unrounded values. ``protocol="valid"``: scikit-image's border handling for each band.

    Args:
        pred, target: ``(B, C, H, W)`` or ``(C, H, W)`` cubes in [0, 1].
    """
    if protocol not in ("mst", "valid"):
        raise ValueError(f"protocol must be 'mst' or 'valid', got {protocol!r}")
    pred, target, batched = _check_pair(pred, target)
    ssim_map = _ssim_map(pred, target, 1.0, "gaussian", "zeros" if protocol == "mst" else "valid")
    return _reduce(ssim_map.mean(dim=(1, 2, 3)), reduction, batched)

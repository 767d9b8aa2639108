"""The field's protocols: PSNR/SSIM exactly as the CS, SR and CASSI code bases report them.

Each helper fixes what the general :func:`~.core.psnr` / :func:`~.core.ssim` leave open (channel,
range, rounding, border, SSIM window and padding) to reproduce the code base it is named after:

* CS (ISTA-Net family): :func:`cs_psnr`, :func:`cs_ssim`.
* SR (KAIR / USRNet): :func:`psnr_y`, :func:`ssim_y` on the BT.601 luma of :func:`rgb_to_y`.
* CASSI (TSA-Net / MST / DAUHST): :func:`cassi_psnr`, :func:`cassi_ssim`, per band.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .core import Reduction, _as_float64, _check_pair, _psnr_per_image, _reduce, _shave, _ssim_map

#: MATLAB ``rgb2ycbcr`` luma row for R, G, B in [0, 1], giving Y on [0, 255] (offset 16 added).
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0


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

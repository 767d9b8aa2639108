"""PSNR / SSIM of an unfolding model on clean images it measures itself (the loop's usual ``eval_fn``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .batches import _images, _model_dtype, derive_seed


def evaluate_psnr(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    *,
    noise_sigma: float = 0.0,
    seed: int = 0,
    data_range: float = 1.0,
    compute_ssim: bool = False,
    protocol: str = "plain",
) -> dict[str, float]:
    """Mean PSNR (and SSIM) of ``model`` on clean ``images`` measured by ``model.physics``.

    ``images``: ``(N, C, H, W)`` or a list of ``(C, H, W)`` tensors (sizes may differ) in ``[0, data_range]``.
    Each image is measured with noise seeded by ``(seed, index)``, reconstructed alone, cropped to the
    image's ``(H, W)`` (block CS pads bottom/right) and scored against the clean image with
    :mod:`lorun_peft.metrics`. ``protocol="plain"``: :func:`~lorun_peft.metrics.psnr` /
    :func:`~lorun_peft.metrics.ssim` (Gaussian window) on ``[0, data_range]`` after clamping;
    ``protocol="cs"``: the ISTA-Net CS protocol, :func:`~lorun_peft.metrics.cs_psnr` /
    :func:`~lorun_peft.metrics.cs_ssim` (gray, [0, 255], 7x7 uniform window; ``data_range`` must be 1).
    """
    from lorun_peft import metrics

    if protocol not in ("plain", "cs"):
        raise ValueError(f"protocol must be 'plain' or 'cs', got {protocol!r}")
    if protocol == "cs" and data_range != 1.0:
        raise ValueError(
            f"protocol='cs' expects images in [0, 1] (data_range=1.0), got data_range={data_range}"
        )
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) or a list of (C, H, W), got {tuple(images.shape)}")
        images = list(images)
    if len(images) == 0:
        raise ValueError("evaluate_psnr needs at least one image")
    if protocol == "cs":
        psnr_fn, ssim_fn = metrics.cs_psnr, metrics.cs_ssim
    else:
        psnr_fn = functools.partial(metrics.psnr, data_range=data_range)
        ssim_fn = functools.partial(metrics.ssim, data_range=data_range)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    psnrs, ssims = [], []
    with torch.no_grad():
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3:
                raise ValueError(f"image {index} must be a (C, H, W) tensor")
            clean = image.to(device=device, dtype=dtype).unsqueeze(0)
            noise = torch.Generator(device=device).manual_seed(derive_seed(seed, 0, 0, index, "eval"))
            restored = _images(model(model.physics.measure(clean, noise_sigma, noise)))
            restored = restored[..., : clean.shape[-2], : clean.shape[-1]].clamp(0, data_range)
            psnrs.append(float(psnr_fn(restored, clean)))
            if compute_ssim:
                ssims.append(float(ssim_fn(restored, clean)))
    model.train(was_training)
    out = {"psnr": sum(psnrs) / len(psnrs)}
    if compute_ssim:
        out["ssim"] = sum(ssims) / len(ssims)
    return out

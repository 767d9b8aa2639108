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

Modules: :mod:`.core` (the general :func:`psnr` / :func:`ssim`, input checks, the SSIM map) and
:mod:`.protocols` (the CS, SR and CASSI helpers and :func:`rgb_to_y`). Import from ``lorun_peft.metrics``.
"""

# The metric constants and the Reduction type stay importable from lorun_peft.metrics (not in __all__).
from .core import SSIM_GAUSSIAN_SIGMA as SSIM_GAUSSIAN_SIGMA
from .core import SSIM_GAUSSIAN_TRUNCATE as SSIM_GAUSSIAN_TRUNCATE
from .core import SSIM_K1 as SSIM_K1
from .core import SSIM_K2 as SSIM_K2
from .core import SSIM_UNIFORM_SIZE as SSIM_UNIFORM_SIZE
from .core import Reduction as Reduction
from .core import psnr, ssim
from .protocols import BT601_Y_OFFSET as BT601_Y_OFFSET
from .protocols import BT601_Y_WEIGHTS as BT601_Y_WEIGHTS
from .protocols import cassi_psnr, cassi_ssim, cs_psnr, cs_ssim, psnr_y, rgb_to_y, ssim_y

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

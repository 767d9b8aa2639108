"""What the CASSI task reads and builds: its options, the coded aperture, cube files, real measurements.

:mod:`.cassi` (the spec) uses these; they are public because scripts and tests build masks and cubes
the same way (a synthetic mask and cubes from RGB images stand in for missing data in ``--smoke`` runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lorun_peft.data.cubes import CUBE_EXTENSIONS, read_cube_wavelengths
from lorun_peft.data.pseudocolor import cube_wavelengths
from lorun_peft.data.transforms import PatchSize, patch_shape

from .base import data_roots

__all__ = [
    "DEFAULT_MASK",
    "SMOKE_MASK_SIZE",
    "CASSIArguments",
    "crop_mask",
    "cube_files",
    "real_measurement_scale",
    "resolve_mask",
    "stores_wavelengths",
    "synthetic_cube",
    "synthetic_mask",
]

#: The TSA simulation mask, relative to the data root.
DEFAULT_MASK = "CASSI/simulation/mask.mat"
#: Side of the synthetic mask of ``--smoke`` runs without a mask file (evaluation rebuilds it).
SMOKE_MASK_SIZE = 64


@dataclass
class CASSIArguments:
    """The CASSI degradation (mask, dispersion, bands) and the ways scarce cubes are stretched."""

    mask: str | None = field(
        default=None,
        metadata={
            "help": "CASSI: coded aperture .mat (variable 'mask', H x W; default: "
            "<data_dir>/CASSI/simulation/mask.mat). Patches smaller than the mask use a random mask crop."
        },
    )
    dispersion_step: int = field(default=2, metadata={"help": "CASSI: dispersion in pixels per band."})
    bands: int = field(
        default=28,
        metadata={
            "help": "CASSI: band count. 28 resamples cubes that store their wavelengths (CAVE: 31 bands, "
            "400-700 nm) to the KAIST/TSA wavelengths; other counts must match the files."
        },
    )
    band_gain: float = field(
        default=0.0,
        metadata={
            "help": "CASSI: strength s of the random band-wise brightness (a smooth gain in [1-s, 1+s] "
            "across the bands times a brightness in [1-s, 1]); 0 turns it off."
        },
    )
    rgb_lift_data: str | None = field(
        default=None,
        metadata={
            "help": "CASSI: a folder of RGB images (e.g. BSDS500_train200) lifted to spectra by a linear map "
            "fitted on the training cubes, mixed into the training patches (see --rgb_lift_fraction)."
        },
    )
    rgb_lift_fraction: float = field(
        default=0.5, metadata={"help": "CASSI: share of training patches that are lifted RGB images."}
    )
    rgb_lift_match_brightness: bool = field(
        default=False,
        metadata={
            "help": "CASSI: scale each lifted RGB patch to the mean brightness of a random training-cube "
            "patch (photographs are 2-5x brighter than CAVE radiance and would dominate the l2 loss)."
        },
    )


def real_measurement_scale(scale: float | str, bands: int) -> float:
    """The factor for real CASSI measurements: ``"mst"`` -> ``bands / 2``, or a positive number."""
    if isinstance(scale, str):
        if scale.strip().lower() == "mst":
            return bands / 2
        try:
            scale = float(scale)
        except ValueError:
            raise ValueError(
                f"real measurement scale must be 'mst' or a positive number, got {scale!r}"
            ) from None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < float("inf")):
        raise ValueError(f"real measurement scale must be 'mst' or a positive number, got {scale!r}")
    return float(scale)


def synthetic_mask(size: int | tuple[int, int], seed: int = 0) -> Tensor:
    """A random coded aperture ``(H, W)`` with values in [0.05, 1] (smoke runs without a mask file)."""
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)
    return 0.05 + 0.95 * torch.rand(height, width, generator=generator)


def synthetic_cube(image: Tensor, bands: int) -> Tensor:
    """A smooth ``(bands, H, W)`` cube in [0, 1] from an RGB image ``(3, H, W)``.

    Each pixel's spectrum is a mix of three Gaussian bumps (at 610, 540, 465 nm, 45 nm wide) weighted by
    its R, G, B values: real spatial structure and smooth spectra, for smoke runs without cubes.
    """
    from lorun_peft.data.spectral import gaussian_responses

    response = gaussian_responses(cube_wavelengths(bands))  # (bands, 3)
    cube = torch.einsum("bc,chw->bhw", response, image.to(torch.float64))
    return (cube / cube.max().clamp_min(1e-12)).to(torch.float32)


def crop_mask(mask: Tensor, size: PatchSize, seed: int = 0) -> Tensor:
    """A random ``size x size`` (or ``(h, w)``) crop of an ``(H, W)`` mask (the whole mask at its size)."""
    height, width = mask.shape
    crop_height, crop_width = patch_shape(size)
    if crop_height > height or crop_width > width:
        shown = crop_height if crop_height == crop_width else f"{crop_height}x{crop_width}"
        raise ValueError(
            f"patch size {shown} is larger than the {height}x{width} CASSI mask; use --patch_size / "
            f"--patch_height <= {height}x{width} or a larger mask"
        )
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    return mask[top : top + crop_height, left : left + crop_width].contiguous()


def resolve_mask(
    args: CASSIArguments, smoke: bool, size: int, seed: int = 0, data_dir: str | os.PathLike | None = None
) -> tuple[Tensor, str]:
    """The CASSI mask named by ``--mask`` (or the default file), or a synthetic one for ``--smoke``."""
    from lorun_peft.physics import load_cassi_mask

    if args.mask is not None:
        path = Path(args.mask)
        if not path.is_file():
            raise FileNotFoundError(f"CASSI mask file {path} does not exist (expected a .mat with 'mask')")
        return load_cassi_mask(path), str(path)
    for root in data_roots(data_dir):
        if (root / DEFAULT_MASK).is_file():
            return load_cassi_mask(root / DEFAULT_MASK), str(root / DEFAULT_MASK)
    if smoke:
        return synthetic_mask(size, seed), f"synthetic random mask {size}x{size} (seed {seed})"
    raise FileNotFoundError(
        f"no CASSI mask: pass --mask PATH.mat (or --data_dir holding {DEFAULT_MASK}); "
        "--smoke uses a random one"
    )


def cube_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"test cubes {source} do not exist (expected a folder or a .npz/.mat file)")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in CUBE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(
            f"no cube files in {source}; expected files ending in {', '.join(CUBE_EXTENSIONS)}"
        )
    return files


def stores_wavelengths(path: Path) -> bool:
    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".mat")) if path.is_dir() else [path]
    )
    return bool(files) and all(read_cube_wavelengths(p) is not None for p in files)

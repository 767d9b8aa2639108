"""SD-CASSI spectral snapshot imaging (28-band cubes, a coded aperture), scored with the TSA/MST protocol.

Training measures random patches through a random crop of the mask per batch; evaluation uses the
whole mask (top-left crop to the cube's size), as TSA-Net and MST do.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorun_peft import metrics
from lorun_peft.data.cubes import CUBE_EXTENSIONS, KAIST_WAVELENGTHS_28, load_cube, read_cube_wavelengths
from lorun_peft.data.pseudocolor import cassi_to_rgb, cube_wavelengths
from lorun_peft.io import write_atomic

from .base import Item, Metric, TaskSpec, data_roots, png_bytes

__all__ = [
    "CASSIArguments",
    "CASSITask",
    "crop_mask",
    "resolve_mask",
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


def crop_mask(mask: Tensor, size: int, seed: int = 0) -> Tensor:
    """A random ``size x size`` crop of an ``(H, W)`` mask (the whole mask when it is that size)."""
    height, width = mask.shape
    if size > height or size > width:
        raise ValueError(
            f"patch size {size} is larger than the {height}x{width} CASSI mask; use --patch_size <= "
            f"{min(height, width)} or a larger mask"
        )
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return mask[top : top + size, left : left + size].contiguous()


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


def _cube_files(source: Path) -> list[Path]:
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


def _stores_wavelengths(path: Path) -> bool:
    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".mat")) if path.is_dir() else [path]
    )
    return bool(files) and all(read_cube_wavelengths(p) is not None for p in files)


class CASSITask(TaskSpec):
    name = "cassi"
    label = "CASSI"
    title = "SD-CASSI spectral snapshot imaging, 28 bands (sets mask-28: simulation mask, mask-real: TSA)"
    arguments = CASSIArguments
    algorithm = "hqs"
    hub_tag = "spectral-imaging"
    protocol = (
        "CASSI (TSA/MST): per-band PSNR on round(x*256) (peak 255) and per-band Gaussian SSIM "
        "(zero-padded), averaged over the bands"
    )
    train_data = "CASSI/cubes/stuffed_toys.npz"  # cloth, the other cube, is the test scene
    test_data = "CASSI/cubes/cloth.npz"
    physics_types = ("cassi",)
    protocol_label = "CASSI protocol: per-band PSNR/SSIM"
    restores_images = False
    evaluates_with_one_mask = True
    smoke_patch_size = 32
    default_set = "mask-28"
    set_key = "bands"
    recipe = (
        "--mode shared --denoiser ssr --output_dir runs/cassi/backbone",
        "--mode lorun --backbone runs/cassi/backbone --denoiser ssr --output_dir runs/cassi/sets/m28",
    )

    def channels(self, args: CASSIArguments | None) -> int:
        return 28 if args is None else args.bands

    def build_physics(
        self,
        args: CASSIArguments,
        patch_size: int,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> tuple[Any, str]:
        """:class:`~lorun_peft.physics.CASSI` on a random ``patch_size`` crop of the mask (seeded)."""
        from lorun_peft.physics import CASSI

        mask, source = resolve_mask(args, smoke, max(patch_size, SMOKE_MASK_SIZE), seed, data_dir)
        crop = crop_mask(mask, patch_size, seed)
        where = "whole mask"
        if crop.shape != mask.shape:
            where = f"a new random {patch_size}x{patch_size} crop per batch"
        physics = CASSI(crop, step=args.dispersion_step)
        return physics, f"CASSI {args.bands} bands, step {args.dispersion_step}, mask {source} ({where})"

    def physics_sampler(
        self,
        args: CASSIArguments,
        patch_size: int,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> Any:
        """A :class:`~lorun_peft.data.RandomMaskCrops` when the mask is larger than the patches."""
        from lorun_peft.data.mask_crops import RandomMaskCrops

        mask, _ = resolve_mask(args, smoke, max(patch_size, SMOKE_MASK_SIZE), seed, data_dir)
        if tuple(mask.shape) == (patch_size, patch_size):
            return None
        return RandomMaskCrops(mask, patch_size)

    def set_name(self, args: CASSIArguments) -> str:
        return f"mask-{args.bands}"

    def describe_physics(self, config: dict[str, Any]) -> str:
        height, width = config["mask_shape"]
        return f"SD-CASSI, {height}x{width} mask, dispersion {config['step']} px/band"

    # ------------------------------------------------------------------ data
    def load_test_items(
        self, source: Any, args: CASSIArguments | None = None, *, max_items: int | None = None
    ) -> list[Item]:
        """The ``.npz``/``.mat`` cubes of a folder (or one file), resampled to KAIST's 28 bands when the
        file stores its wavelengths (CAVE: 31); otherwise the file must have ``--bands`` bands."""
        bands = self.channels(args)
        items = []
        for path in _cube_files(Path(source)):
            resample = bands == 28 and read_cube_wavelengths(path) is not None
            cube = load_cube(
                path,
                expected_bands=None if resample else bands,
                wavelengths=KAIST_WAVELENGTHS_28 if resample else None,
            )
            items.append((path.stem, cube))
        return items[:max_items] if max_items is not None else items

    def train_dataset(self, path: Path, args: CASSIArguments, data: Any, *, seed: int = 0) -> tuple[Any, str]:
        """:class:`~lorun_peft.data.CubePatchDataset` plus ``--rgb_lift_data`` and ``--band_gain``."""
        from lorun_peft.data.cubes import CubePatchDataset

        resample = args.bands == 28 and _stores_wavelengths(path)
        dataset = CubePatchDataset(
            str(path),
            data.patch_size,
            KAIST_WAVELENGTHS_28 if resample else None,
            seed=seed,
            patches_per_cube=data.patches_per_image,
            expected_bands=None if resample else args.bands,
        )
        if data.max_train_images is not None:
            dataset.cubes = dataset.cubes[: data.max_train_images]
            dataset.names = dataset.names[: data.max_train_images]
        if dataset.bands != args.bands:
            raise ValueError(f"cubes in {path} have {dataset.bands} bands; expected --bands {args.bands}")
        return self._augment(dataset, args, data, seed, f"cubes {path}")

    def _augment(
        self, dataset: Any, args: CASSIArguments, data: Any, seed: int, text: str
    ) -> tuple[Any, str]:
        from lorun_peft.data.images import RandomPatchDataset, load_image_folder
        from lorun_peft.data.spectral import BandGainAugment, LiftedRGBPatches, MixedPatches, SpectralLift

        source: Any = dataset
        if args.rgb_lift_data:
            if not 0.0 < args.rgb_lift_fraction <= 1.0:
                raise ValueError(f"--rgb_lift_fraction must be in (0, 1], got {args.rgb_lift_fraction}")
            path = Path(args.rgb_lift_data)
            if not path.exists():
                raise FileNotFoundError(
                    f"--rgb_lift_data {path} does not exist (expected a folder of RGB images)"
                )
            lift = SpectralLift.fit(dataset.cubes, cube_wavelengths(dataset.bands), seed=seed)
            images = load_image_folder(str(path), split="train", channels=3)
            rgb = RandomPatchDataset(images, data.patch_size, seed=seed, cache_images=True)
            for index in range(len(images)):  # a crop larger than an image fails now, naming the file
                rgb[index]
            source = MixedPatches(dataset, LiftedRGBPatches(rgb, lift), args.rgb_lift_fraction, seed=seed)
            text += (
                f" + {args.rgb_lift_fraction:.0%} RGB images of {path} lifted to {dataset.bands} bands "
                f"(linear map fitted on the cubes, relative error {lift.fit_error:.3f})"
            )
        if args.band_gain:
            source = BandGainAugment(source, args.band_gain, seed=seed)
            text += f", band-wise brightness +-{args.band_gain:g}"
        return source, text

    def smoke_items(self, args: CASSIArguments | None, size: int = 64, count: int = 2) -> list[Item]:
        """Synthetic cubes made from the shipped RGB sample photographs (:func:`synthetic_cube`)."""
        from lorun_peft.data.samples import load_sample_image

        items = []
        for name in ("camera", "astronaut", "coffee", "chelsea")[:count]:
            image = load_sample_image(name, mode="RGB")
            top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
            crop = image[:, top : top + size, left : left + size].contiguous()
            items.append((name, synthetic_cube(crop, self.channels(args))))
        return items

    def evaluation_options(
        self, args: CASSIArguments, *, smoke: bool = False, data_dir: Any = None
    ) -> dict[str, Any]:
        """Score with the full mask (training measures with crops of it), as ``examples/evaluate.py`` does."""
        return {"mask": resolve_mask(args, smoke, SMOKE_MASK_SIZE, 0, data_dir)[0]}

    # ------------------------------------------------------------------ scoring
    @contextlib.contextmanager
    def evaluation_physics(
        self, model: Any, shape: tuple[int, ...], *, index: int = 0, seed: int = 0, mask: Tensor | None = None
    ) -> Iterator[Any]:
        """The active physics, swapped for one whose mask fits the cube (and put back on exit)."""
        from lorun_peft.physics import CASSI

        physics = model.physics
        height, width = shape[-2:]
        source = mask if mask is not None else physics.mask
        what = (
            "the given mask"
            if mask is not None
            else "the model's mask (pass mask= / --mask for the full one)"
        )
        if source.shape[0] < height or source.shape[1] < width:
            raise ValueError(
                f"a {height}x{width} cube needs a mask at least that large, but {what} is "
                f"{source.shape[0]}x{source.shape[1]}"
            )
        if tuple(physics.mask.shape) == (height, width) and mask is None:
            yield physics
            return
        crop = source[:height, :width].to(device=physics.mask.device, dtype=physics.mask.dtype)
        with model.active_task.swapped_physics(CASSI(crop, step=physics.step)) as swapped:
            yield swapped

    def score(self, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
        restored = restored.clamp(0, 1)
        return float(metrics.cassi_psnr(restored, clean)), float(metrics.cassi_ssim(restored, clean))

    def stage_metric(self, physics: Any) -> Metric:
        return metrics.cassi_psnr

    def read_mask(self, path: Path) -> Tensor:
        from lorun_peft.physics import load_cassi_mask

        if not Path(path).is_file():
            raise FileNotFoundError(f"--mask {path} does not exist (expected a .mat with 'mask')")
        return load_cassi_mask(path)

    def read_real_measurement(
        self, path: Path, real_scale: Any, physics: Any
    ) -> tuple[Tensor, dict[str, str]] | None:
        """A TSA ``.mat`` holding ``meas_real`` (stored divided by C/2), scaled by ``real_scale``."""
        from lorun_peft.physics import load_cassi_measurement, load_mat_variables

        if Path(path).suffix.lower() != ".mat":
            return None
        if "meas_real" not in load_mat_variables(path):
            return None
        y = load_cassi_measurement(path)
        factor = real_measurement_scale(real_scale, physics.bands(y[None]))
        return y * factor, {"real_scale": f"{factor:g}"}

    def write_restored(self, image: Tensor, png: Path) -> list[Path]:
        buffer = io.BytesIO()
        np.save(buffer, image.detach().cpu().float().numpy())
        return [
            write_atomic(png, png_bytes(cassi_to_rgb(image))),
            write_atomic(png.with_suffix(".npy"), buffer.getvalue()),
        ]

    def save_restored(
        self,
        image: Tensor,
        folder: Path,
        name: str,
        *,
        display_percentile: float | None = None,
        **options: Any,
    ) -> list[Path]:
        """``<name>.png`` (pseudo-colour, :func:`cassi_to_rgb`) and ``<name>.npz`` (the cube, H x W x C).

        With ``display_percentile`` the PNG is first divided by that percentile of its values (display
        only; the ``.npz`` keeps the restored values).
        """
        cube = image.detach().cpu().float()
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            cube=cube.permute(1, 2, 0).numpy(),
            wavelengths_nm=np.asarray(cube_wavelengths(cube.shape[0]), dtype=np.float32),
        )
        rgb = cassi_to_rgb(cube)
        if display_percentile is not None:
            top = float(torch.quantile(rgb.flatten(), display_percentile / 100))
            rgb = rgb / top if top > 0 else rgb
        return [
            write_atomic(folder / f"{name}.png", png_bytes(rgb)),
            write_atomic(folder / f"{name}.npz", buffer.getvalue()),
        ]

"""SD-CASSI spectral snapshot imaging (28-band cubes, a coded aperture), scored with the TSA/MST protocol.

Training measures random patches through a random crop of the mask per batch; evaluation uses the
whole mask (top-left crop to the cube's size), as TSA-Net and MST do. The options, masks, cube files and
real measurements are read by :mod:`.cassi_inputs`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorun_peft import metrics
from lorun_peft.data.cubes import KAIST_WAVELENGTHS_28, load_cube, read_cube_wavelengths
from lorun_peft.data.pseudocolor import cassi_to_rgb, cube_wavelengths
from lorun_peft.data.transforms import PatchSize, patch_shape
from lorun_peft.io import write_atomic

from .base import Item, Metric, TaskSpec, png_bytes
from .cassi_inputs import (
    SMOKE_MASK_SIZE,
    CASSIArguments,
    crop_mask,
    cube_files,
    real_measurement_scale,
    resolve_mask,
    stores_wavelengths,
    synthetic_cube,
    synthetic_mask,
)

__all__ = [
    "CASSIArguments",
    "CASSITask",
    "crop_mask",
    "real_measurement_scale",
    "resolve_mask",
    "synthetic_cube",
    "synthetic_mask",
]


#: Distinct crops each training cube offers per step, times ``--patches_per_image``. A training batch is
#: drawn with replacement from a dataset whose item ``i`` at step ``s`` is a pure function of
#: ``(seed, s, i)``; with one crop per cube (the image tasks' default) a batch from a single cube was
#: ``batch_size`` copies of one crop.
CROPS_PER_CUBE = 1024


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
    strip_patches = True
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
        patch_size: PatchSize,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> tuple[Any, str]:
        """:class:`~lorun_peft.physics.CASSI` on a random ``patch_size`` crop of the mask (seeded).

        ``patch_size`` is a side or ``(height, width)``: a full-width strip such as ``(32, 256)`` keeps a
        256-wide scene's band overlap at an eighth of its pixels (docs/tasks_cassi.md).
        """
        from lorun_peft.physics import CASSI

        height, width = patch_shape(patch_size)
        mask, source = resolve_mask(args, smoke, max(height, width, SMOKE_MASK_SIZE), seed, data_dir)
        crop = crop_mask(mask, patch_size, seed)
        where = "whole mask"
        if crop.shape != mask.shape:
            where = f"a new random {height}x{width} crop per batch"
        physics = CASSI(crop, step=args.dispersion_step)
        return physics, f"CASSI {args.bands} bands, step {args.dispersion_step}, mask {source} ({where})"

    def physics_sampler(
        self,
        args: CASSIArguments,
        patch_size: PatchSize,
        *,
        smoke: bool = False,
        seed: int = 0,
        data_dir: Any = None,
    ) -> Any:
        """A :class:`~lorun_peft.data.RandomMaskCrops` when the mask is larger than the patches."""
        from lorun_peft.data.mask_crops import RandomMaskCrops

        height, width = patch_shape(patch_size)
        mask, _ = resolve_mask(args, smoke, max(height, width, SMOKE_MASK_SIZE), seed, data_dir)
        if tuple(mask.shape) == (height, width):
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
        for path in cube_files(Path(source)):
            resample = bands == 28 and read_cube_wavelengths(path) is not None
            cube = load_cube(
                path,
                expected_bands=None if resample else bands,
                wavelengths=KAIST_WAVELENGTHS_28 if resample else None,
            )
            items.append((path.stem, cube))
        return items[:max_items] if max_items is not None else items

    def train_dataset(self, path: Path, args: CASSIArguments, data: Any, *, seed: int = 0) -> tuple[Any, str]:
        """:class:`~lorun_peft.data.CubePatchDataset` (:data:`CROPS_PER_CUBE` crops per cube and
        ``--patches_per_image``) plus ``--rgb_lift_data`` and ``--band_gain``."""
        from lorun_peft.data.cubes import CubePatchDataset

        resample = args.bands == 28 and stores_wavelengths(path)
        dataset = CubePatchDataset(
            str(path),
            data.patch,
            KAIST_WAVELENGTHS_28 if resample else None,
            seed=seed,
            patches_per_cube=data.patches_per_image * CROPS_PER_CUBE,
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
            rgb = RandomPatchDataset(images, data.patch, seed=seed, cache_images=True)
            for index in range(len(images)):  # a crop larger than an image fails now, naming the file
                rgb[index]
            reference = dataset if args.rgb_lift_match_brightness else None
            lifted = LiftedRGBPatches(rgb, lift, brightness_reference=reference)
            source = MixedPatches(dataset, lifted, args.rgb_lift_fraction, seed=seed)
            text += (
                f" + {args.rgb_lift_fraction:.0%} RGB images of {path} lifted to {dataset.bands} bands "
                f"(linear map fitted on the cubes, relative error {lift.fit_error:.3f}"
                + (", scaled to the cubes' brightness)" if reference is not None else ")")
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

    def smoke_dataset(self, args: CASSIArguments, data: Any, *, seed: int = 0) -> tuple[Any, str]:
        """Cube patches of two synthetic cubes (:meth:`smoke_items`)."""
        from lorun_peft.data.cubes import CubePatchDataset

        tensors = [t for _, t in self.smoke_items(args, size=max(64, *patch_shape(data.patch)), count=2)]
        dataset = CubePatchDataset(tensors, data.patch, seed=seed)
        return dataset, "shipped sample images (synthetic cubes)"

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

"""Evaluate a LoRun model on a folder of test images or cubes with the task's published protocol.

:func:`evaluate_items` simulates each test item's measurement with the model's active physics (the
adapter set's CS ratio, SR kernel and scale, or CASSI mask), restores it and scores it:

* CS (ISTA-Net protocol): gray images, :func:`~lorun_peft.metrics.cs_psnr` / ``cs_ssim`` on [0, 255].
* SR (KAIR/USRNet protocol): the HR image cropped to a multiple of the scale, PSNR/SSIM on the BT.601 Y
  channel with ``scale`` border pixels shaved (:func:`~lorun_peft.metrics.psnr_y` / ``ssim_y``).
* CASSI (TSA/MST protocol): per-band PSNR/SSIM averaged over the bands
  (:func:`~lorun_peft.metrics.cassi_psnr` / ``cassi_ssim``); the cube's side must fit the mask, which is
  fixed (not learned), so a model trained on mask crops is evaluated with the full mask (``mask=``).

Restored images are saved as PNG (cubes: the :func:`lorun_peft.figures.cassi_to_rgb` pseudo-colour PNG
and an ``.npz``), and ``stagewise=True`` adds the PSNR of every stage. :func:`reconstruct_real_cassi`
restores real TSA measurements (no ground truth). The example ``examples/evaluate.py`` and
``lorun evaluate`` only call these functions.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lorun_peft import metrics
from lorun_peft.data.cubes import CUBE_EXTENSIONS, KAIST_WAVELENGTHS_28, load_cube, read_cube_wavelengths
from lorun_peft.data.images import image_to_tensor
from lorun_peft.data.tasks import PHYSICS_TASK, TASK_CHANNELS, cube_wavelengths, load_images
from lorun_peft.figures import cassi_to_rgb

from .report import EvaluationReport, ItemResult, write_atomic

__all__ = [
    "PROTOCOLS",
    "evaluate_folder",
    "evaluate_items",
    "load_test_items",
    "real_measurement_scale",
    "reconstruct_real_cassi",
    "save_restored",
    "task_of",
]

#: The protocol each task is scored with (written into every report).
PROTOCOLS = {
    "cs": "CS (ISTA-Net): gray PSNR on [0, 255] with the estimate clipped to [0, 1]; SSIM 7x7 uniform window",
    "sr": "SR (KAIR/USRNet): HR cropped to a multiple of the scale; PSNR/SSIM (Gaussian) on BT.601 Y, "
    "[0, 255], border of `scale` pixels shaved",
    "cassi": "CASSI (TSA/MST): per-band PSNR on round(x*256) (peak 255) and per-band Gaussian SSIM "
    "(zero-padded), averaged over the bands",
}

Item = tuple[str, Tensor]


def task_of(model: Any) -> str:
    """``"cs"``, ``"sr"`` or ``"cassi"`` from the type of the model's active physics."""
    kind = model.physics.get_config()["type"]
    if kind not in PHYSICS_TASK:
        raise ValueError(
            f"no evaluation protocol for physics {kind!r}; expected one of {sorted(PHYSICS_TASK)}"
        )
    return PHYSICS_TASK[kind]


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


def load_test_items(
    task: str, source: str | os.PathLike, *, bands: int = 28, max_items: int | None = None
) -> list[Item]:
    """``[(name, tensor)]`` test items in [0, 1], sorted by name.

    CS / SR: every image of a folder (or Hub dataset) through :func:`~lorun_peft.data.load_image_folder`,
    gray ``(1, H, W)`` / RGB ``(3, H, W)``; a corrupt file raises ``ValueError`` naming it. CASSI: the
    ``.npz``/``.mat`` cubes of a folder (or one file) as ``(bands, H, W)``, resampled to the 28 KAIST
    wavelengths when ``bands == 28`` and the file stores its wavelengths (CAVE: 31 bands); otherwise the
    file must have ``bands`` bands (``ValueError`` naming it).
    """
    if task == "cassi":
        items = []
        for path in _cube_files(Path(source)):
            resample = bands == 28 and read_cube_wavelengths(path) is not None
            cube = load_cube(
                path,
                expected_bands=None if resample else bands,
                wavelengths=KAIST_WAVELENGTHS_28 if resample else None,
            )
            items.append((path.stem, cube))
    elif task in TASK_CHANNELS:
        channels = TASK_CHANNELS[task]
        dataset = load_images(source, channels)
        import datasets

        paths = dataset.cast_column("image", datasets.Image(decode=False))["image"]
        items = [
            (
                Path(record["path"]).stem if record.get("path") else f"{index:04d}",
                image_to_tensor(row["image"], channels),
            )
            for index, (record, row) in enumerate(zip(paths, dataset))
        ]
        items.sort(key=lambda item: item[0])
    else:
        raise ValueError(f"task must be 'cs', 'sr' or 'cassi', got {task!r}")
    return items[:max_items] if max_items is not None else items


@contextlib.contextmanager
def _evaluation_physics(model: Any, task: str, shape: tuple[int, ...], mask: Tensor | None) -> Iterator[Any]:
    """The active physics, for CASSI swapped for one whose mask fits the cube (restored afterwards)."""
    physics = model.physics
    if task != "cassi":
        yield physics
        return
    from lorun_peft.physics import CASSI

    height, width = shape[-2:]
    source = mask if mask is not None else physics.mask
    what = "the given mask" if mask is not None else "the model's mask (pass mask= / --mask for the full one)"
    if source.shape[0] < height or source.shape[1] < width:
        raise ValueError(
            f"a {height}x{width} cube needs a mask at least that large, but {what} is "
            f"{tuple(source.shape[0:2])[0]}x{source.shape[1]}"
        )
    task_params = model.active_task
    original = task_params.physics
    crop = source[:height, :width].to(device=physics.mask.device, dtype=physics.mask.dtype)
    if tuple(original.mask.shape) == (height, width) and mask is None:
        yield original
        return
    task_params.physics = CASSI(crop, step=original.step)
    try:
        yield task_params.physics
    finally:
        task_params.physics = original


def _prepare(task: str, image: Tensor, physics: Any) -> Tensor:
    if task == "sr":
        s = physics.scale
        return image[..., : image.shape[-2] - image.shape[-2] % s, : image.shape[-1] - image.shape[-1] % s]
    return image


def _score(task: str, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
    restored = restored.clamp(0, 1)
    if task == "cs":
        return float(metrics.cs_psnr(restored, clean)), float(metrics.cs_ssim(restored, clean))
    if task == "sr":
        s = physics.scale
        return float(metrics.psnr_y(restored, clean, shave=s)), float(
            metrics.ssim_y(restored, clean, shave=s)
        )
    return float(metrics.cassi_psnr(restored, clean)), float(metrics.cassi_ssim(restored, clean))


def _stage_psnr(task: str, restored: Tensor, clean: Tensor, physics: Any) -> float:
    restored = restored.clamp(0, 1)
    if task == "cs":
        return float(metrics.cs_psnr(restored, clean))
    if task == "sr":
        return float(metrics.psnr_y(restored, clean, shave=physics.scale))
    return float(metrics.cassi_psnr(restored, clean))


def _check_channels(model: Any, name: str, image: Tensor) -> None:
    expected = model.denoisers[0].config.in_channels
    if image.shape[0] != expected:
        kind = "bands" if image.shape[0] > 3 or expected > 3 else "channels"
        raise ValueError(f"test item {name} has {image.shape[0]} {kind}; the model expects {expected}")


def evaluate_items(
    model: Any,
    task: str | None,
    items: Sequence[Item],
    *,
    mask: Tensor | None = None,
    noise_sigma: float = 0.0,
    seed: int = 0,
    stagewise: bool = False,
    save_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int, ItemResult], None] | None = None,
) -> EvaluationReport:
    """Score ``model`` on ``items`` (``[(name, (C, H, W) tensor in [0, 1])]``) with the task's protocol.

    Each item's measurement is simulated with the model's active physics (noise ``noise_sigma`` seeded by
    ``(seed, index)``) and restored in eval mode without gradients. ``mask`` (CASSI): the full coded
    aperture (top-left crop to the cube's size); default: the model's. ``stagewise``: also score the K
    stage estimates. ``save_dir``: write each restored item there (PNG; cubes: pseudo-colour PNG + .npz).
    ``progress(done, total, result)`` is called after each item (the CLI prints a line per image).
    """
    from lorun_peft.training import derive_seed

    task = task or task_of(model)
    if not items:
        raise ValueError("no test items to evaluate")
    reference = next(model.parameters())
    device, dtype = reference.device, reference.dtype
    report = EvaluationReport(task=task, protocol=PROTOCOLS[task])
    was_training = model.training
    model.eval()
    try:
        for index, (name, image) in enumerate(items):
            _check_channels(model, name, image)
            with _evaluation_physics(model, task, tuple(image.shape), mask) as physics, torch.no_grad():
                clean = _prepare(task, image, physics).to(device=device, dtype=dtype).unsqueeze(0)
                generator = torch.Generator(device=device).manual_seed(derive_seed(seed, 0, 0, index, "eval"))
                y = physics.measure(clean, noise_sigma, generator)
                output = model(y, return_stages=stagewise, image_size=tuple(clean.shape[-2:]))
                restored = output.images
                psnr, ssim = _score(task, restored, clean, physics)
                stages = [_stage_psnr(task, s, clean, physics) for s in output.stages] if stagewise else None
            report.items.append(ItemResult(name, psnr, ssim, tuple(image.shape), stages))
            if save_dir is not None:
                save_restored(restored[0], Path(save_dir), name, task)
            if progress is not None:
                progress(index + 1, len(items), report.items[-1])
    finally:
        model.train(was_training)
    report.metadata.update(
        {
            "physics": model.physics.get_config(),
            "mode": model.mode,
            "adapter_set": model.active_adapter_set,
            "num_stages": model.config.num_stages,
            "noise_sigma": noise_sigma,
            "seed": seed,
        }
    )
    return report


def evaluate_folder(
    model: Any,
    task: str | None,
    folder: str | os.PathLike,
    *,
    bands: int | None = None,
    max_items: int | None = None,
    **kwargs: Any,
) -> EvaluationReport:
    """:func:`load_test_items` then :func:`evaluate_items`; ``task=None`` infers it from the physics."""
    task = task or task_of(model)
    bands = bands or model.denoisers[0].config.in_channels
    items = load_test_items(task, folder, bands=bands, max_items=max_items)
    report = evaluate_items(model, task, items, **kwargs)
    report.metadata["data"] = str(folder)
    return report


# ---------------------------------------------------------------------------------------------- images
def _png_bytes(image: Tensor) -> bytes:
    array = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


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


def save_restored(
    image: Tensor, folder: Path, name: str, task: str, *, display_percentile: float | None = None
) -> list[Path]:
    """Save one restored ``(C, H, W)`` item as ``<name>.png`` (cubes: pseudo-colour PNG + ``<name>.npz``).

    The cube's PNG is :func:`lorun_peft.figures.cassi_to_rgb` (each band in its wavelength's colour),
    clipped to [0, 1]: the same mapping as ``lorun restore`` and the comparison figures. With
    ``display_percentile`` the pseudo-colour image is first divided by that percentile of its values
    (display only; the ``.npz`` keeps the restored values).
    """
    if task != "cassi":
        return [write_atomic(folder / f"{name}.png", _png_bytes(image))]
    cube = image.detach().cpu().float()
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        cube=cube.permute(1, 2, 0).numpy(),
        wavelengths_nm=np.asarray(cube_wavelengths(cube.shape[0]), dtype=np.float32),
    )
    return [
        write_atomic(folder / f"{name}.png", _png_bytes(_stretch(cassi_to_rgb(cube), display_percentile))),
        write_atomic(folder / f"{name}.npz", buffer.getvalue()),
    ]


def _stretch(rgb: Tensor, percentile: float | None) -> Tensor:
    if percentile is None:
        return rgb
    top = float(torch.quantile(rgb.detach().float().flatten(), percentile / 100))
    return rgb / top if top > 0 else rgb


# ---------------------------------------------------------------------------------------------- real CASSI
def reconstruct_real_cassi(
    model: Any,
    measurements: str | os.PathLike | Sequence[str | os.PathLike],
    mask: Tensor,
    output_dir: str | os.PathLike,
    *,
    measurement_scale: float | str = "mst",
) -> list[Path]:
    """Restore real SD-CASSI measurements (e.g. TSA's 660x714 ``scene*.mat``) with the 660x660 ``mask``.

    The model's mask is replaced by ``mask`` (same dispersion step); the band count that the measurement
    width implies must equal the model's. Each scene is multiplied by ``measurement_scale``: TSA-Net and
    MST store real measurements divided by ``C / 2`` (their network input is ``shift_back(y / C * 2)``),
    so ``"mst"`` (the default) multiplies by ``C / 2`` to put them on the ``y = A x`` scale of the
    simulated training data; a number multiplies by that number. Each scene is restored and written as
    ``<scene>.npz`` (the raw cube) and ``<scene>.png``, a pseudo-colour image stretched so its 99.5th
    percentile is white (real scenes are dim; the stretch is for display only). No ground truth exists,
    so nothing is scored. Returns the written files.
    """
    from lorun_peft.physics import CASSI, load_cassi_measurement

    source = measurements
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if folder.is_dir():
            files = sorted(folder.glob("*.mat"))
            if not files:
                raise FileNotFoundError(f"no .mat measurement files in {folder}")
        else:
            files = [folder]
    else:
        files = [Path(p) for p in source]
    if task_of(model) != "cassi":
        raise ValueError(f"real CASSI reconstruction needs a CASSI model, this one is {task_of(model)!r}")
    expected = model.denoisers[0].config.in_channels
    scale = real_measurement_scale(measurement_scale, expected)
    reference = next(model.parameters())
    task_params = model.active_task
    original = task_params.physics
    physics = CASSI(mask.to(device=reference.device, dtype=reference.dtype), step=original.step)
    written: list[Path] = []
    task_params.physics = physics
    try:
        for path in files:
            y = load_cassi_measurement(path).to(device=reference.device, dtype=reference.dtype)
            try:
                bands = physics.bands(y.unsqueeze(0))
            except ValueError as err:
                raise ValueError(f"measurement {path}: {err}") from err
            if bands != expected:
                raise ValueError(
                    f"measurement {path} has width {y.shape[-1]}, i.e. {bands} bands with the "
                    f"{tuple(mask.shape)} mask and step {physics.step}; the model expects {expected} bands"
                )
            cube = model.restore(y * scale)
            written += save_restored(cube, Path(output_dir), path.stem, "cassi", display_percentile=99.5)
    finally:
        task_params.physics = original
    return written

"""Evaluate a LoRun model on a folder of test images or cubes with the task's published protocol.

:func:`evaluate_items` simulates each test item's measurement with the model's active physics (the
adapter set's CS ratio, SR kernel and scale, or CASSI mask), restores it and scores it:

Each task's :class:`~lorun_peft.tasks.TaskSpec` reads the items, draws their physics and scores them:

* CS (ISTA-Net protocol): gray images, :func:`~lorun_peft.metrics.cs_psnr` / ``cs_ssim`` on [0, 255].
* SR (KAIR/USRNet protocol): the HR image cropped to a multiple of the scale, PSNR/SSIM on the BT.601 Y
  channel with ``scale`` border pixels shaved (:func:`~lorun_peft.metrics.psnr_y` / ``ssim_y``).
* CASSI (TSA/MST protocol): per-band PSNR/SSIM averaged over the bands
  (:func:`~lorun_peft.metrics.cassi_psnr` / ``cassi_ssim``); the cube's side must fit the mask, which is
  fixed (not learned), so a model trained on mask crops is evaluated with the full mask (``mask=``).
* Inpainting: a random mask per image seeded by ``(seed, index)``, scored like CS.

The model is left as it was found: a physics swapped for an item (a CASSI mask that fits the cube, an
inpainting mask) is put back, and train/eval mode is restored.

Restored images are saved as PNG (cubes: the :func:`lorun_peft.figures.cassi_to_rgb` pseudo-colour PNG
and an ``.npz``), and ``stagewise=True`` adds the PSNR of every stage. :func:`reconstruct_real_cassi`
restores real TSA measurements (no ground truth). The example ``examples/evaluate.py`` and
``lorun evaluate`` only call these functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorun_peft.tasks import Item, TaskSpec, get_task, task_for_physics
from lorun_peft.tasks.cassi_inputs import real_measurement_scale

from .report import EvaluationReport, ItemResult

__all__ = [
    "evaluate_folder",
    "evaluate_items",
    "load_test_items",
    "real_measurement_scale",
    "reconstruct_real_cassi",
    "save_restored",
    "task_of",
]


def task_of(model: Any) -> str:
    """The name of the task that owns the model's active physics (``"cs"``, ``"sr"``, ``"cassi"`` ...)."""
    return task_for_physics(model.physics).name


def load_test_items(
    task: str | TaskSpec, source: str | os.PathLike, *, bands: int | None = None, max_items: int | None = None
) -> list[Item]:
    """``[(name, tensor)]`` test items in [0, 1], sorted by name, read the task's way.

    Images (CS, SR, inpainting): every image of a folder (or Hub dataset), gray or RGB; a corrupt file
    raises ``ValueError`` naming it. CASSI: the ``.npz``/``.mat`` cubes of a folder (or one file) as
    ``(bands, H, W)``, resampled to the 28 KAIST wavelengths when ``bands == 28`` and the file stores its
    wavelengths (CAVE: 31 bands); otherwise the file must have ``bands`` bands (``ValueError`` naming it).
    """
    spec = get_task(task)
    args = spec.arguments(bands=bands) if bands is not None and hasattr(spec.arguments, "bands") else None
    return spec.load_test_items(source, args, max_items=max_items)


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
    kernel: Tensor | None = None,
    noise_sigma: float = 0.0,
    seed: int = 0,
    stagewise: bool = False,
    save_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int, ItemResult], None] | None = None,
) -> EvaluationReport:
    """Score ``model`` on ``items`` (``[(name, (C, H, W) tensor in [0, 1])]``) with the task's protocol.

    Each item's measurement is simulated with the model's active physics (noise ``noise_sigma`` seeded by
    ``(seed, index)``) and restored in eval mode without gradients. ``mask`` (CASSI): the full coded
    aperture (top-left crop to the cube's size); default: the model's. ``kernel`` (SR): the blur kernel to
    score with, written into the physics for the run and put back; default: the model's. ``stagewise``:
    also score the K stage estimates. ``save_dir``: write each restored item there (PNG; cubes:
    pseudo-colour PNG + .npz). ``progress(done, total, result)`` is called after each item (the CLI prints a
    line per image).
    """
    from lorun_peft.training import derive_seed

    spec = get_task(task) if task else task_for_physics(model.physics)
    if not items:
        raise ValueError("no test items to evaluate")
    reference = next(model.parameters())
    device, dtype = reference.device, reference.dtype
    report = EvaluationReport(task=spec.name, protocol=spec.protocol)
    options: dict[str, Tensor] = {"mask": mask} if mask is not None else {}
    if kernel is not None:
        options["kernel"] = kernel
    was_training = model.training
    model.eval()
    try:
        for index, (name, image) in enumerate(items):
            _check_channels(model, name, image)
            shape = tuple(image.shape)
            with (
                spec.evaluation_physics(model, shape, index=index, seed=seed, **options) as physics,
                torch.no_grad(),
            ):
                clean = spec.prepare(image, physics).to(device=device, dtype=dtype).unsqueeze(0)
                generator = torch.Generator(device=device).manual_seed(derive_seed(seed, 0, 0, index, "eval"))
                y = physics.measure(clean, noise_sigma, generator)
                output = model(y, return_stages=stagewise, image_size=tuple(clean.shape[-2:]))
                restored = output.images
                psnr, ssim = spec.score(restored, clean, physics)
                metric = spec.stage_metric(physics)
                stages = [float(metric(s.clamp(0, 1), clean)) for s in output.stages] if stagewise else None
            report.items.append(ItemResult(name, psnr, ssim, shape, stages))
            if save_dir is not None:
                spec.save_restored(restored[0], Path(save_dir), name)
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
    spec = get_task(task) if task else task_for_physics(model.physics)
    bands = bands or model.denoisers[0].config.in_channels
    items = load_test_items(spec, folder, bands=bands, max_items=max_items)
    report = evaluate_items(model, spec.name, items, **kwargs)
    report.metadata["data"] = str(folder)
    return report


# ---------------------------------------------------------------------------------------------- real CASSI
def save_restored(
    image: Tensor, folder: Path, name: str, task: str, *, display_percentile: float | None = None
) -> list[Path]:
    """Save one restored ``(C, H, W)`` item the task's way: ``<name>.png`` (cubes: also ``.npz``).

    ``display_percentile`` (cubes): divide the PNG by that percentile of its values (display only).
    """
    options = {} if display_percentile is None else {"display_percentile": display_percentile}
    return get_task(task).save_restored(image, Path(folder), name, **options)


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
    if not isinstance(model.physics, CASSI):
        raise ValueError(f"real CASSI reconstruction needs a CASSI model, this one is {task_of(model)!r}")
    expected = model.denoisers[0].config.in_channels
    scale = real_measurement_scale(measurement_scale, expected)
    reference = next(model.parameters())
    physics = CASSI(mask.to(device=reference.device, dtype=reference.dtype), step=model.physics.step)
    written: list[Path] = []
    with model.active_task.swapped_physics(physics):
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
    return written

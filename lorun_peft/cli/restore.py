"""``lorun restore``: one image file or saved measurement in, a restored image out.

An image file is the clean image (its measurement is simulated with the model's physics and PSNR/SSIM are
printed) unless ``--measured`` says it is the measurement itself; ``.npy``/``.safetensors``/``.mat`` files
are measurements in the physics' layout. What differs between tasks (reading masks and real measurements,
preparing images, writing the result, scoring) comes from the model's :class:`~lorun_peft.tasks.TaskSpec`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

from lorun_peft.help import HelpFormatter
from lorun_peft.tasks import task_for_physics

from .common import (
    MEASUREMENT_SUFFIXES,
    _add_model_arguments,
    _describe_physics,
    _load_model,
    _model_line,
    _parse_size,
    _read_measurement,
    _selected_set,
    _write_measurement,
)


def run_restore(args: argparse.Namespace) -> int:
    from lorun_peft.data.images import IMAGE_EXTENSIONS, image_to_tensor

    start = time.perf_counter()
    source = Path(args.input)
    if not source.is_file():
        raise FileNotFoundError(f"input {source} does not exist (expected an image or a measurement file)")
    suffix = source.suffix.lower()
    if suffix not in (*IMAGE_EXTENSIONS, *MEASUREMENT_SUFFIXES):
        raise ValueError(
            f"cannot read {source.name}: expected an image ({', '.join(IMAGE_EXTENSIONS)}) or a saved "
            f"measurement ({', '.join(MEASUREMENT_SUFFIXES)})"
        )
    output = Path(args.output) if args.output else source.with_name(f"{source.stem}_restored.png")
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {output}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    image_size = _parse_size(args.image_size)
    model, where = _load_model(args)
    spec = task_for_physics(model)
    mask = spec.read_mask(Path(args.mask)) if args.mask is not None else None
    reference = next(model.parameters())
    channels = model.denoisers[0].config.in_channels
    clean = None
    if suffix in IMAGE_EXTENSIONS:
        if not spec.restores_images:
            raise ValueError(
                f"a {spec.name} model restores measurements (.npy/.safetensors/.mat), not image files"
            )
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as handle:
                image = image_to_tensor(handle, channels)
        except UnidentifiedImageError as error:
            raise ValueError(f"cannot decode image {source}: {error}") from error
        image = image.to(device=reference.device, dtype=reference.dtype)
        if args.measured:
            y, kind = image, "measurement (image file)"
        else:
            if image_size is not None:
                raise ValueError(
                    "--image-size crops the estimate of a saved measurement; this input is a clean image, "
                    "restored at its own size (drop --image-size, or crop the image first)"
                )
            clean = spec.prepare(image, model.physics).unsqueeze(0)
            image_size = tuple(clean.shape[-2:])
            kind = "clean image (measurement simulated with the model's physics)"
    else:
        if args.measured:
            raise ValueError("--measured applies to image files; saved measurements are always measurements")
        real = spec.read_real_measurement(source, args.real_scale, model.physics)
        y, metadata = real if real is not None else _read_measurement(source)
        if image_size is None and "image_size" in metadata:
            image_size = _parse_size(metadata["image_size"])
        kind = f"measurement {tuple(y.shape)}"
        if "real_scale" in metadata:
            kind += f", a real TSA measurement (meas_real) multiplied by {metadata['real_scale']}"
        saved_set = metadata.get("adapter_set") or None
        if saved_set in model.list_adapter_sets() and saved_set != model.active_adapter_set:
            if _selected_set(args, spec.name) is not None:
                raise ValueError(
                    f"{source.name} was simulated with adapter set {saved_set!r} (its own physics), but "
                    f"{model.active_adapter_set!r} was selected; drop the selection or pick {saved_set!r}"
                )
            model.set_adapter_set(saved_set)
            kind += f", simulated with adapter set {saved_set!r} (recorded in the file)"
    shape = tuple(clean.shape[1:]) if clean is not None else tuple(y.shape[-3:])
    options = {"mask": mask} if mask is not None else {}
    uses_item_physics = clean is not None or mask is not None
    with (
        spec.evaluation_physics(model, shape, seed=args.seed, **options)
        if uses_item_physics
        else contextlib.nullcontext(model.physics)
    ) as physics:
        if clean is not None:
            generator = torch.Generator(device=clean.device).manual_seed(args.seed)
            with torch.no_grad():
                y = physics.measure(clean, noise_sigma=args.noise_sigma, generator=generator)[0]
        restored = model.restore(y.to(device=reference.device, dtype=reference.dtype), image_size=image_size)
        restored = restored if restored.ndim == 4 else restored.unsqueeze(0)
        initial = None
        if clean is not None:
            with torch.no_grad():
                initial = physics.init(y.unsqueeze(0))[..., : clean.shape[-2], : clean.shape[-1]]
        described = _describe_physics(physics.get_config())
    written = spec.write_restored(restored[0], output)
    if args.save_measurement:
        if clean is None:
            raise ValueError("--save-measurement needs a clean image input (the measurement is simulated)")
        written.append(_write_measurement(Path(args.save_measurement), y, model, image_size))
    print(f"model: {_model_line(model)} from {where}")
    print(f"physics: {described}")
    print(f"input: {source} as {kind}")
    if clean is not None:
        for label, estimate in (("initial estimate", initial), ("restored", restored)):
            psnr, ssim = spec.score(estimate, clean, physics)
            print(f"{label:<17} PSNR {psnr:6.2f} dB  SSIM {ssim:.4f}  ({spec.protocol_label})")
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``lorun restore`` to the subcommands."""
    parser = commands.add_parser(
        "restore",
        help="restore an image file or a saved measurement",
        description="An image file is the clean image: its measurement is simulated with the model's physics "
        "and PSNR/SSIM are printed (--measured: the image IS the measurement, e.g. an SR low-resolution "
        "image). A .npy / .safetensors (tensor 'measurement') / .mat (variable 'measurement', or the only "
        "one) file is a measurement in the physics' layout, batched or not. Writes a PNG (CASSI: a "
        "pseudo-colour PNG and the cube as .npy).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("input", help="image file, or measurement (.npy, .safetensors, .mat)")
    parser.add_argument(
        "--output", default=None, metavar="PNG", help="restored PNG (default: <input>_restored.png)"
    )
    parser.add_argument("--measured", action="store_true", help="the image file is the measurement itself")
    parser.add_argument(
        "--image-size", default=None, metavar="HxW", help="HxW to crop the estimate to (CS on a padded grid)"
    )
    parser.add_argument(
        "--noise-sigma", type=float, default=0.0, metavar="S", help="noise of a simulated measurement"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that noise")
    parser.add_argument(
        "--real-scale",
        default="mst",
        metavar="F",
        help="CASSI: factor for a real TSA measurement (.mat variable 'meas_real', stored divided by C/2): "
        "'mst' multiplies by C/2 (14 for 28 bands), or a number",
    )
    parser.add_argument(
        "--mask",
        default=None,
        metavar="PATH",
        help="inpainting: mask of the measurement (PNG or .npy, nonzero = observed pixel); for a clean image "
        "without it, a random mask of the set's missing rate seeded by --seed",
    )
    parser.add_argument(
        "--save-measurement",
        default=None,
        metavar="PATH",
        help="also save the simulated measurement (.npy or .safetensors)",
    )
    _add_model_arguments(parser)
    parser.set_defaults(func=run_restore)

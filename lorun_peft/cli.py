"""The ``lorun`` command line: demo, restore, evaluate, info and train.

``lorun demo`` is the README's main job: it restores a shipped public-domain image from simulated 25 %
block-CS measurements with the shipped LoRun-9 and compares it with the initial estimate and the
phase-1 backbone alone (Block-9-share), then swaps in another ratio's adapter set in place. ``restore``
turns an image or a saved measurement into a restored image, ``evaluate`` scores a folder through
:mod:`lorun_peft.evaluation`, ``info`` prints a model's configuration, adapter sets and parameter
report, and ``train`` points at the example training scripts. Models come from the shipped assets
(:mod:`lorun_peft.pretrained`) or from ``--backbone``/``--adapters`` (folders or Hub ids). Bad
arguments and missing files print one ``error:`` line on stderr and exit with code 2. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorun_peft.tasks import task_for_physics, task_names

#: Suffixes read as saved measurements by ``lorun restore`` (images are read by their own suffixes).
MEASUREMENT_SUFFIXES = (".npy", ".safetensors", ".mat")
#: The command-line options that select an adapter set by its task mode (each names a field of one task's
#: arguments dataclass: --ratio is CS's, --scale/--kernel SR's, --missing inpainting's).
SET_OPTIONS = ("ratio", "scale", "kernel", "missing")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``lorun <command>: error: ... (see --help)`` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.HelpFormatter):
    """Wrapped help that shows the default of every option that has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if (
            not flag  # a switch's default says the opposite of its help ("--no-images ... True")
            and default is not None
            and default is not False
            and default != argparse.SUPPRESS
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


# ---------------------------------------------------------------------------------------------- helpers
def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"--device {name!r} is not a device (expected cpu, cuda, cuda:1, mps ...)"
        ) from error
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not available:
        raise ValueError(
            f"--device {name!r}: this PyTorch build ({torch.__version__}) has no usable {device.type} "
            "device; use --device cpu or leave --device out"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _write_bytes(path: Path, data: bytes) -> Path:
    """Atomic write: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _png(image: torch.Tensor) -> bytes:
    """``(C, H, W)`` in [0, 1] (C = 1 or 3) -> PNG bytes (8-bit, rounded)."""
    from PIL import Image

    array = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _percent(value: float) -> str:
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text} %"


def _describe_physics(config: dict[str, Any]) -> str:
    """One line for a physics config (``LinearOperator.get_config()``), in its task's words."""
    from lorun_peft.tasks import task_for_physics

    try:
        return task_for_physics(config).describe_physics(config)
    except ValueError:
        return json.dumps(config, sort_keys=True)


def _task_of(model: Any) -> str:
    from lorun_peft.tasks import task_for_physics

    return task_for_physics(model).name


# ---------------------------------------------------------------------------------------------- models
def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model",
        "The shipped pretrained model of --task (an adapter set chosen by --ratio, or --scale/--kernel, or "
        "--adapter-set), or your own with --backbone/--adapters.",
    )
    group.add_argument(
        "--task", choices=task_names(), default=None, help="task of the shipped model (default: cs)"
    )
    group.add_argument(
        "--ratio", type=float, default=None, metavar="R", help="CS: select set ratio-XX (0.25 or 25)"
    )
    group.add_argument(
        "--scale", type=int, default=None, metavar="S", help="SR: select set x{scale}-k{kernel}"
    )
    group.add_argument(
        "--kernel", default=None, metavar="K", help="SR: kernel K1..K12 of the set (default K1)"
    )
    group.add_argument(
        "--missing",
        type=float,
        default=None,
        metavar="M",
        help="inpainting: select set missing-XX (0.7 for 70 %%)",
    )
    group.add_argument(
        "--adapter-set", default=None, metavar="NAME", help="adapter set by name (e.g. ratio-25, x4-k1)"
    )
    group.add_argument("--backbone", default=None, metavar="PATH", help="your own backbone: folder or Hub id")
    group.add_argument(
        "--adapters",
        default=None,
        metavar="PATH",
        help="adapter sets: a set folder, or a folder/Hub repo of <set>/ folders (all are loaded); "
        "without --backbone they go onto the shipped backbone of --task",
    )
    group.add_argument(
        "--pretrained-dir",
        default=None,
        metavar="DIR",
        help="root of the shipped assets (default: $LORUN_PRETRAINED_DIR or lorun_peft/assets/pretrained)",
    )
    group.add_argument(
        "--device", default=None, metavar="DEV", help="cpu, cuda, ... (default: cuda if available, else cpu)"
    )


def _selected_set(args: argparse.Namespace, task: str | None) -> str | None:
    """The set named by --adapter-set, or by a task mode (--ratio, --scale/--kernel, --missing)."""
    from dataclasses import fields

    from lorun_peft.tasks import get_task, task_names

    chosen = {name: getattr(args, name) for name in SET_OPTIONS if getattr(args, name, None) is not None}
    if args.adapter_set is not None:
        if chosen:
            flags = "/".join(f"--{n}" for n in chosen)
            raise ValueError(
                f"--adapter-set names the set; {flags} would select another one: give one or the other"
            )
        return args.adapter_set
    if not chosen:
        return None
    owners = [
        get_task(n) for n in task_names() if set(chosen) <= {f.name for f in fields(get_task(n).arguments)}
    ]
    flags = "/".join(f"--{n}" for n in chosen)
    if not owners:
        raise ValueError(f"{flags} select sets of different tasks: give the options of one task")
    spec = owners[0]
    s = "s" if len(chosen) == 1 else ""
    if task not in (None, spec.name):
        raise ValueError(f"{flags} select{s} {spec.label} sets, but the task is {task!r}")
    if spec.set_key not in chosen:
        raise ValueError(f"{flags} need{s} --{spec.set_key} (it names the {spec.label} set)")
    return spec.set_name_for(**chosen)


def _sr_choice(args: argparse.Namespace, names: list[str]) -> tuple[str | None, int | None]:
    """``--scale``/``--kernel`` -> (set name, kernel index to write into an all-kernel set, or None)."""
    from lorun_peft.pretrained import resolve_sr_set

    if args.adapter_set is not None or args.scale is None:
        return None, None
    return resolve_sr_set(names, args.scale, args.kernel)


def _apply_kernel(model: Any, index: int | None, pretrained_dir: str | None) -> None:
    """Write shipped kernel ``K{index+1}`` into an all-kernel SR set's physics."""
    if index is None:
        return
    from lorun_peft import pretrained

    kernels = pretrained.pretrained_kernels(pretrained_dir)
    with torch.no_grad():
        model.physics.kernel.copy_(kernels[index].to(model.physics.kernel))


def _load_model(args: argparse.Namespace) -> tuple[Any, str]:
    """The selected model (eval mode, on ``--device``) and a one-line description of where it came from."""
    from lorun_peft import pretrained

    if args.backbone is not None:
        index = None
        if args.scale is not None and args.adapters is not None and args.adapter_set is None:
            model = pretrained.load_model(args.backbone, args.adapters)  # every set resident
            selected, index = _sr_choice(args, model.list_adapter_sets())
            model.set_adapter_set(selected)
        else:
            model = pretrained.load_model(args.backbone, args.adapters, _selected_set(args, None))
        _apply_kernel(model, index, args.pretrained_dir)
        source = f"backbone {args.backbone}" + (f", adapters {args.adapters}" if args.adapters else "")
        task = _task_of(model)
        if args.task is not None and args.task != task:
            raise ValueError(f"--task {args.task} but the backbone's physics is a {task!r} model")
    else:
        task = args.task or "cs"
        if args.adapters is None:
            pretrained.pretrained_dir(task, args.pretrained_dir)  # clear error when none is installed
        set_name = _selected_set(args, task)
        index = None
        if args.adapters is not None:
            backbone = pretrained.pretrained_dir(task, args.pretrained_dir) / pretrained.BACKBONE_DIR
            model = pretrained.load_model(backbone, args.adapters, set_name)
            source = f"shipped {task} backbone {backbone}, adapters {args.adapters}"
        else:
            if args.scale is not None:  # an SR set: single-kernel if installed, else the all-kernel one
                set_name, index = _sr_choice(
                    args, pretrained.list_pretrained(args.pretrained_dir).get(task, [])
                )
            model = pretrained.load_pretrained(task, set_name, args.pretrained_dir)
            source = f"shipped pretrained {task!r} ({pretrained.pretrained_dir(task, args.pretrained_dir)})"
        _apply_kernel(model, index, args.pretrained_dir)
        if index is not None:
            source += f", kernel K{index + 1} in the all-kernel set {set_name}"
    return model.to(_device(args.device)), source


def _model_line(model: Any) -> str:
    k = model.num_stages
    if model.mode == "lorun":
        return f"LoRun-{k} (adapter set {model.active_adapter_set})"
    return f"Block-{k}" if model.mode == "block" else f"Block-{k}-share"


# ---------------------------------------------------------------------------------------------- demo
def _centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    if size == 0:
        return image
    if not 8 <= size <= min(height, width):
        raise ValueError(f"--size must be 0 (whole image) or in [8, {min(height, width)}], got {size}")
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size].contiguous()


def run_demo(args: argparse.Namespace) -> int:
    from lorun_peft.data.samples import list_sample_images, load_sample_image
    from lorun_peft.figures import comparison_figure
    from lorun_peft.metrics import cs_psnr, cs_ssim
    from lorun_peft.pretrained import adapter_set_name, load_pretrained, pretrained_dir

    start = time.perf_counter()
    other = _OTHER_DEMOS.get(args.task)
    if other is not None:
        return other(args, start)
    if args.image not in list_sample_images():
        raise ValueError(f"unknown sample image {args.image!r}; expected one of {list_sample_images()}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {output}")
    main_set = adapter_set_name("cs", ratio=args.ratio)
    others = [adapter_set_name("cs", ratio=r) for r in args.other_ratio]
    model = load_pretrained("cs", None, args.pretrained_dir).to(_device(args.device))
    installed = model.list_adapter_sets()
    missing = [name for name in [main_set, *others] if name not in installed]
    if missing:
        raise ValueError(f"the shipped CS model has no adapter set {missing}; installed: {installed}")
    loaded = time.perf_counter() - start
    reference = next(model.parameters())
    clean = _centre_crop(load_sample_image(args.image, "L"), args.size)
    clean = clean.unsqueeze(0).to(device=reference.device, dtype=reference.dtype)
    size = tuple(clean.shape[-2:])
    k = model.num_stages

    def measure(physics: Any) -> torch.Tensor:
        generator = torch.Generator(device=clean.device).manual_seed(args.seed)
        return physics.measure(clean, noise_sigma=args.noise_sigma, generator=generator)

    def restore(physics: Any) -> torch.Tensor:
        return model.restore(measure(physics), image_size=size)

    # (label in the table, short title in the figure, set, physics, estimate)
    rows: list[tuple[str, str, str, Any, torch.Tensor]] = []
    model.set_adapter_set(main_set)
    with torch.no_grad():
        initial = model.physics.init(measure(model.physics))[..., : size[0], : size[1]]
    rows.append(("initial estimate (Phi^T y)", "initial Phi^T y", main_set, model.physics, initial))
    with model.disable_adapters():
        block = restore(model.physics)
        rows.append(
            (f"Block-{k}-share (backbone alone)", f"Block-{k}-share", "phase-1", model.physics, block)
        )
    rows.append((f"LoRun-{k}", f"LoRun-{k}", main_set, model.physics, restore(model.physics)))
    for name in others:
        model.set_adapter_set(name)
        rows.append(
            (f"LoRun-{k} (set swapped in)", f"LoRun-{k}", name, model.physics, restore(model.physics))
        )
    model.set_adapter_set(main_set)

    crop = "whole image" if args.size == 0 else "centre crop"
    print(f"LoRun demo: restore the shipped image {args.image!r} ({size[0]}x{size[1]} {crop}) from block-CS")
    print(
        f"model: shipped LoRun-{k} (sets {', '.join(installed)}) "
        f"from {pretrained_dir('cs', args.pretrained_dir)}"
    )
    print(
        "measurement: each method samples the same clean image with its own learned Phi (the set's, or the "
        f"backbone's phase-1 one), noise sigma {args.noise_sigma:g}, seed {args.seed}"
    )
    print("metrics: CS protocol (ISTA-Net; lorun_peft.metrics.cs_psnr/cs_ssim): gray on [0, 255], clipped")
    print()
    print(f"{'method':<32} {'set':<9} {'ratio':>7} {'PSNR (dB)':>10} {'SSIM':>7}")
    captions, titles = ["PSNR / SSIM"], ["ground truth"]
    for label, title, set_name, physics, estimate in rows:
        psnr = float(cs_psnr(estimate, clean))
        ssim = float(cs_ssim(estimate, clean))
        print(f"{label:<32} {set_name:<9} {_percent(physics.ratio):>7} {psnr:>10.2f} {ssim:>7.4f}")
        captions.append(f"{psnr:.2f} dB / {ssim:.4f}")
        titles.append(f"{title} ({_percent(physics.ratio)})")
    images = [clean[0], *(estimate[0] for *_, estimate in rows)]
    path = comparison_figure(images, titles, output, captions=captions)
    print()
    print(f"wrote {path} ({len(images)} panels with zoom boxes)")
    print(f"done in {time.perf_counter() - start:.1f} s (loading the model {loaded:.1f} s)")
    return 0


def _run_cassi_demo(args: argparse.Namespace, start: float) -> int:
    """``lorun demo --task cassi``: a cube made from a shipped RGB image, restored with set mask-28."""
    from lorun_peft.data.samples import list_sample_images, load_sample_image
    from lorun_peft.figures import comparison_figure
    from lorun_peft.metrics import cassi_psnr, cassi_ssim
    from lorun_peft.pretrained import load_pretrained, pretrained_dir
    from lorun_peft.tasks import synthetic_cube

    image = "coffee" if args.image == "camera" else args.image  # camera is gray
    if image not in list_sample_images():
        raise ValueError(f"unknown sample image {image!r}; expected one of {list_sample_images()}")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {output}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    model = load_pretrained("cassi", "mask-28", args.pretrained_dir).to(_device(args.device))
    loaded = time.perf_counter() - start
    reference = next(model.parameters())
    size = model.physics.mask.shape[0]
    rgb = load_sample_image(image, "RGB")
    if min(rgb.shape[-2:]) < size:
        raise ValueError(f"sample image {image!r} is smaller than the {size}x{size} mask")
    bands = model.denoisers[0].config.in_channels
    clean = synthetic_cube(_centre_crop(rgb, size), bands).unsqueeze(0)
    clean = clean.to(device=reference.device, dtype=reference.dtype)
    generator = torch.Generator(device=clean.device).manual_seed(args.seed)
    with torch.no_grad():
        y = model.physics.measure(clean, noise_sigma=args.noise_sigma, generator=generator)
        initial = model.physics.init(y)
    restored = model.restore(y)
    k = model.num_stages
    print(f"LoRun demo: SD-CASSI, a {bands}-band cube made from the shipped image {image!r} ({size}x{size})")
    print(f"model: shipped LoRun-{k} (set mask-28) from {pretrained_dir('cassi', args.pretrained_dir)}")
    print(
        "measurement: the TSA simulation mask, 2-pixel dispersion; the cube's spectra are three smooth "
        "bumps weighted by R, G, B (lorun_peft.tasks.synthetic_cube), not a real scene"
    )
    print("metrics: CASSI protocol (TSA/MST): per-band PSNR / SSIM averaged over the bands")
    print()
    print(f"{'method':<32} {'PSNR (dB)':>10} {'SSIM':>7}")
    captions, titles, images = ["PSNR / SSIM"], ["ground truth (pseudo-colour)"], [clean[0]]
    for label, estimate in (("initial estimate (shift back)", initial), (f"LoRun-{k}", restored)):
        estimate = estimate.clamp(0, 1)
        psnr, ssim = float(cassi_psnr(estimate[0], clean[0])), float(cassi_ssim(estimate[0], clean[0]))
        print(f"{label:<32} {psnr:>10.2f} {ssim:>7.4f}")
        captions.append(f"{psnr:.2f} dB / {ssim:.4f}")
        titles.append(label)
        images.append(estimate[0])
    path = comparison_figure(images, titles, output, captions=captions)
    print()
    print(f"wrote {path}; real TSA scenes: lorun restore <scene>.mat --task cassi --adapter-set mask-real")
    print(f"done in {time.perf_counter() - start:.1f} s (loading the model {loaded:.1f} s)")
    return 0


def _run_inpainting_demo(args: argparse.Namespace, start: float) -> int:
    """``lorun demo --task inpainting``: a shipped gray image with ``--missing`` of its pixels dropped."""
    from lorun_peft.data.samples import list_sample_images, load_sample_image
    from lorun_peft.figures import comparison_figure
    from lorun_peft.pretrained import adapter_set_name, load_pretrained, pretrained_dir
    from lorun_peft.tasks import get_task
    from lorun_peft.tasks.inpainting import harmonic_inpainting

    if args.image not in list_sample_images():
        raise ValueError(f"unknown sample image {args.image!r}; expected one of {list_sample_images()}")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {output}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    spec = get_task("inpainting")
    set_name = adapter_set_name("inpainting", missing=args.missing)
    model = load_pretrained("inpainting", None, args.pretrained_dir).to(_device(args.device))
    if set_name not in model.list_adapter_sets():
        raise ValueError(f"the shipped inpainting model has no set {set_name!r}: {model.list_adapter_sets()}")
    model.set_adapter_set(set_name)
    loaded = time.perf_counter() - start
    reference = next(model.parameters())
    clean = _centre_crop(load_sample_image(args.image, "L"), args.size).unsqueeze(0)
    clean = clean.to(device=reference.device, dtype=reference.dtype)
    mask = model.physics.operator.draw_mask(*clean.shape[-2:], torch.Generator().manual_seed(args.seed))
    rows = []
    with spec.evaluation_physics(model, tuple(clean.shape[1:]), mask=mask) as physics:
        generator = torch.Generator(device=clean.device).manual_seed(args.seed)
        with torch.no_grad():
            y = physics.measure(clean, noise_sigma=args.noise_sigma, generator=generator)
            rows.append(("seen pixels (A^T y)", physics.A_adjoint(y)))
            rows.append(("initial estimate (fill)", physics.init(y)))
            rows.append(("harmonic (classical)", harmonic_inpainting(y, physics.operator.mask)))
        restored = model.restore(y)
    with model.disable_adapters(), spec.evaluation_physics(model, tuple(clean.shape[1:]), mask=mask):
        rows.append((f"Block-{model.num_stages}-share (backbone)", model.restore(y)))
    rows.append((f"LoRun-{model.num_stages} ({set_name})", restored))
    print(f"LoRun demo: inpainting of the shipped image {args.image!r} ({clean.shape[-2]}x{clean.shape[-1]})")
    print(f"model: shipped LoRun-{model.num_stages} from {pretrained_dir('inpainting', args.pretrained_dir)}")
    print(f"measurement: {args.missing:.0%} of the pixels missing (random mask, seed {args.seed})")
    print(f"metrics: {spec.protocol_label}")
    print()
    print(f"{'method':<34} {'PSNR (dB)':>10} {'SSIM':>7}")
    captions, titles, images = ["PSNR / SSIM"], ["ground truth"], [clean[0]]
    for label, estimate in rows:
        psnr, ssim = spec.score(estimate, clean, physics)
        print(f"{label:<34} {psnr:>10.2f} {ssim:>7.4f}")
        captions.append(f"{psnr:.2f} dB / {ssim:.4f}")
        titles.append(label)
        images.append(estimate[0].clamp(0, 1))
    path = comparison_figure(images, titles, output, captions=captions)
    print()
    print(f"wrote {path}; your image: lorun restore damaged.png --task inpainting --measured --mask mask.png")
    print(f"done in {time.perf_counter() - start:.1f} s (loading the model {loaded:.1f} s)")
    return 0


#: ``lorun demo --task T`` for the tasks whose demo is not the CS one.
_OTHER_DEMOS = {"cassi": _run_cassi_demo, "inpainting": _run_inpainting_demo}


# ---------------------------------------------------------------------------------------------- restore
def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size must be HxW with positive integers (e.g. 256x256), got {text!r}")
    return int(parts[0]), int(parts[1])


def _read_measurement(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """A saved measurement (``.npy``, ``.safetensors``, ``.mat``) as float32 and the file's metadata."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise ValueError(f"cannot read {path} as a numeric .npy array: {error}") from error
        if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
            raise ValueError(f"{path} is not a single .npy array (an .npz archive?); expected one array")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"{path} holds {array.dtype}, expected a real numeric array")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), {}
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                key = "measurement" if "measurement" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"{path} holds tensors {keys}; expected one named 'measurement'")
                tensor = handle.get_tensor(key)
                if tensor.is_complex() or tensor.dtype == torch.bool:
                    raise ValueError(f"{path}: {key!r} is {tensor.dtype}, expected a real numeric tensor")
                return tensor.float(), dict(handle.metadata() or {})
        except SafetensorError as error:
            raise ValueError(f"cannot read {path} as safetensors: {error}") from error
    from lorun_peft.physics import load_mat_array

    return load_mat_array(path, default="measurement").float(), {}


def _write_measurement(path: Path, y: torch.Tensor, model: Any, size: tuple[int, int]) -> Path:
    """Save ``y``: ``.npy``, or ``.safetensors`` with the physics, adapter set and image size as metadata."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, y.detach().cpu().float().numpy())
        return _write_bytes(path, buffer.getvalue())
    if suffix == ".safetensors":
        from safetensors.torch import save

        metadata = {
            "physics": json.dumps(model.physics.get_config()),
            "adapter_set": model.active_adapter_set or "",
            "image_size": f"{size[0]}x{size[1]}",
        }
        return _write_bytes(path, save({"measurement": y.detach().cpu().float().contiguous()}, metadata))
    raise ValueError(f"--save-measurement must end in .npy or .safetensors, got {path}")


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


# ---------------------------------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    from lorun_peft.evaluation import evaluate_folder

    start = time.perf_counter()
    folder = Path(args.folder)
    if not folder.exists():
        raise FileNotFoundError(f"test data {folder} does not exist (expected a folder of images or cubes)")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    import datasets

    model, where = _load_model(args)
    mask = None
    if args.mask is not None:
        spec = task_for_physics(model)
        if not spec.evaluates_with_one_mask:
            raise ValueError(f"--mask is for CASSI models, this one is a {spec.name!r} model")
        mask = spec.read_mask(Path(args.mask))
    output_dir = Path(args.output_dir)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the folder is read through `datasets`; keep the output a table
    progress = _ProgressBar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = evaluate_folder(
            model,
            None,
            folder,
            max_items=args.max_images,
            noise_sigma=args.noise_sigma,
            seed=args.seed,
            stagewise=args.stagewise,
            save_dir=output_dir / "images" if args.save_images else None,
            mask=mask,
            progress=progress,
        )
    finally:
        progress.close()
        if bars:
            datasets.enable_progress_bars()
    report.metadata.update({"model": where, "adapter_set": model.active_adapter_set})
    paths = report.save(output_dir)
    print(f"model: {_model_line(model)} from {where}")
    print(f"physics: {_describe_physics(model.physics.get_config())}")
    print(f"data: {folder} ({len(report.items)} item(s))")
    print(f"protocol: {report.protocol}")
    print(report.format_table())
    extra = [f"{output_dir / 'images'}/"] if args.save_images else []
    print("wrote " + ", ".join([*(str(p) for p in paths.values()), *extra]))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


class _ProgressBar:
    """A tqdm bar on stderr, advanced per scored item with its PSNR; nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int, item: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="evaluate", unit="item", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{item.name}: {item.psnr:.2f} dB", refresh=False)
        self.bar.update(1)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------- info
def _list_pretrained(root: str | None) -> int:
    from lorun_peft.pretrained import list_pretrained, pretrained_root
    from lorun_peft.tasks import get_task

    installed = list_pretrained(root)
    print(f"pretrained assets at {pretrained_root(root)}")
    if not installed:
        print("  none installed")
    for task, description in ((name, get_task(name).title) for name in task_names()):
        if task in installed:
            sets = ", ".join(installed[task]) or "no adapter sets"
            print(f"  {task:<6} {description}: {sets}")
    return 0


def _denoiser_line(config: dict[str, Any]) -> str:
    keys = (
        "in_channels",
        "out_channels",
        "base_channels",
        "depth",
        "hidden_channels",
        "num_blocks",
        "channels",
    )
    details = ", ".join(f"{key} {config[key]}" for key in keys if key in config)
    noise = ", noise-level map" if config.get("noise_level_map") else ""
    return f"{config.get('model_type', '?')} ({details}{noise})"


def run_export(args: argparse.Namespace) -> int:
    from lorun_peft import pretrained
    from lorun_peft.hub import check_replaceable, check_repo_id, export_repo

    check_repo_id(args.repo_id)
    chosen = [flag for flag in ("ratio", "scale", "kernel", "adapter_set") if getattr(args, flag) is not None]
    if chosen:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in chosen)
        raise ValueError(f"lorun export picks adapter sets with --set NAME (repeatable), not {flags}")
    sources = [
        Path(p).expanduser() for p in (args.backbone, args.adapters) if p and Path(p).expanduser().exists()
    ]
    check_replaceable(Path(args.output).expanduser(), args.overwrite, keep=[Path.cwd(), *sources])
    metrics = {}
    if args.metrics:
        from lorun_peft.io import read_json_object

        advice = '--metrics expects {"backbone": {dataset: {metric: value}}, "<set>": {dataset: {...}}}'
        metrics = read_json_object(args.metrics, advice)
    if args.no_backbone and "backbone" in metrics:
        raise ValueError(
            "--metrics has 'backbone' scores, but --no-backbone exports no backbone to attach them to"
        )
    base_model = args.base_model
    if args.backbone is not None:
        model = pretrained.load_model(args.backbone, args.adapters)
    elif args.adapters is not None:
        backbone = pretrained.pretrained_dir(args.task or "cs", args.pretrained_dir) / pretrained.BACKBONE_DIR
        model = pretrained.load_model(backbone, args.adapters)
    else:
        model = pretrained.load_pretrained(args.task or "cs", None, args.pretrained_dir)  # every set
    if base_model is None and args.backbone is None:  # the shipped backbone's Hub repo
        from lorun_peft.hub import SHIPPED_HUB_OWNER

        base_model = f"{SHIPPED_HUB_OWNER}/{args.task or 'cs'}-backbone"
    folder = export_repo(
        model,
        args.output,
        args.repo_id,
        sets=args.set,
        backbone=not args.no_backbone,
        metrics=metrics.pop("backbone", None),
        set_metrics=metrics,
        base_model=base_model,
        overwrite=args.overwrite,
    )
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    print(f"exported {len(files)} files for {args.repo_id} to {folder}:")
    for name in files:
        print(f"  {name}")
    print(f"upload with: hf upload {args.repo_id} {folder} .")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from lorun_peft.pretrained import read_manifest
    from lorun_peft.tuners import base_fingerprint
    from lorun_peft.tuners.stage import get_state

    if args.list:
        return _list_pretrained(args.pretrained_dir)
    model, where = _load_model(args)
    config = model.config
    print(f"model: {_model_line(model)} from {where}")
    print(
        f"task: {_task_of(model)} | mode: {model.mode} | K = {config.num_stages} | "
        f"algorithm: {config.algorithm}"
    )
    print(f"denoiser: {_denoiser_line(config.denoiser)}")
    print(f"phase-1 physics: {_describe_physics(model.task.physics.get_config())}")
    sets = model.list_adapter_sets()
    if sets:
        fingerprint = base_fingerprint(model.shared_denoiser)
        short = fingerprint.split(":")[-1][:12]
        _, state = get_state(model.shared_denoiser)
        print(f"backbone fingerprint: {fingerprint} (every set was checked against it when loaded)")
        print(f"adapter sets ({len(sets)}, active: {model.active_adapter_set}):")
        print(f"  {'name':<12} {'K':>3} {'gamma':>6} {'layout':<7} {'fingerprint':<13} {'steps':<22} physics")
        for name in sets:
            record = state.sets[name]
            first = record.configs[0]
            task = model.adapter_tasks[name]
            step = task.steps.step.detach()
            steps = f"{task.steps.step_name} {float(step.min()):.3g}..{float(step.max()):.3g}"
            print(
                f"  {name:<12} {record.num_stages:>3} {first.gamma:>6g} {first.conv_layout:<7} "
                f"{short:<13} {steps:<22} {_describe_physics(task.physics.get_config())}"
            )
    if args.backbone is None and args.adapters is None:
        manifest = read_manifest(args.task or "cs", args.pretrained_dir)
        for key, value in manifest.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            print(f"manifest {key}: {text}")
    print("parameters (base = denoiser, adapters = stage LoRA, task = physics and steps):")
    print(model.parameter_report().format())
    return 0


# ---------------------------------------------------------------------------------------------- train
def run_train(args: argparse.Namespace) -> int:
    from lorun_peft.tasks import get_task, repo_root

    tasks = task_names() if args.task == "all" else (args.task,)
    examples = repo_root() / "examples"
    where = (
        f"found in {examples}"
        if examples.is_dir()
        else "in the source repository (not installed with the package)"
    )
    print("LoRun trains in two phases with the example scripts (examples/, " + where + "):")
    print(
        "  phase 1 (--mode shared) trains one denoiser shared by the K stages (Block-K-share): the backbone;"
    )
    print("  phase 2 (--mode lorun --backbone DIR) freezes it and trains one adapter set per task mode")
    print("  (K stage LoRA adapters + the set's own physics and steps). --mode block trains Block-K.")
    for task in tasks:
        spec = get_task(task)
        script = f"examples/train_{task}.py"
        print()
        print(f"{task}: {spec.title}")
        for options in spec.recipe:
            print(f"  accelerate launch {script} {options}")
    print()
    from lorun_peft.training.precision import cpu_supports_bf16

    native = "yes" if cpu_supports_bf16() else "no, so fp32"
    print("Precision: the scripts default to --mixed_precision auto (bf16 autocast where the device computes")
    print(
        f"bf16 natively; this CPU: {native}) and --channels_last; --mixed_precision no --channels_last False"
    )
    print("trains plain fp32. --gradient_checkpointing cuts activation memory (docs/training.md).")
    print()
    print("Notes: `python examples/train_<task>.py ...` runs one process without accelerate; add")
    print("`--multi_gpu --num_processes N` after `accelerate launch` for N GPUs; `--smoke` is a seconds-long")
    print("check without data; `python examples/train_<task>.py --help` lists every option. Each run needs")
    print("its own --output_dir (a set is saved into <output_dir>/<set name>). Then:")
    print("  lorun info --backbone runs/cs/backbone --adapters runs/cs/sets/r10")
    print("  lorun evaluate ../shared/data/Set11 --backbone runs/cs/backbone --adapters runs/cs/sets/r10")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``lorun`` argument parser with its six subcommands."""
    parser = _Parser(
        prog="lorun",
        description="LoRun deep LoRA-unfolding networks for image restoration (CS, SR, CASSI).",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="restore a shipped image from simulated 25 %% CS measurements with the shipped LoRun-9",
        description="Simulate block-CS measurements of a shipped public-domain image, restore them with the "
        "shipped LoRun model and its phase-1 backbone, swap in other ratios' adapter sets, print "
        "PSNR/SSIM (CS protocol) and write a side-by-side PNG with zoom boxes.",
        formatter_class=_Formatter,
    )
    demo.add_argument(
        "--task",
        choices=("cs", "cassi", "inpainting"),
        default="cs",
        help="cs: block CS of a gray image; cassi: a spectral cube made from an RGB image (set mask-28); "
        "inpainting: a gray image with --missing of its pixels dropped",
    )
    demo.add_argument(
        "--image",
        default="camera",
        metavar="NAME",
        help="shipped sample image (lorun_peft.data.samples; CASSI uses coffee for the gray default camera)",
    )
    demo.add_argument(
        "--size", type=int, default=256, metavar="N", help="side of the centre crop (0: the whole image)"
    )
    demo.add_argument(
        "--ratio", type=float, default=0.25, metavar="R", help="CS ratio of the main adapter set"
    )
    demo.add_argument(
        "--other-ratio",
        type=float,
        nargs="+",
        metavar="R",
        default=[0.10, 0.50],
        help="ratio(s) of the set(s) swapped in afterwards (ratio-10, ratio-50 ...)",
    )
    demo.add_argument(
        "--missing", type=float, default=0.7, metavar="M", help="inpainting: share of missing pixels (set)"
    )
    demo.add_argument(
        "--noise-sigma", type=float, default=0.0, metavar="S", help="measurement noise std (images in [0, 1])"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    demo.add_argument("--output", default="lorun_demo.png", metavar="PNG", help="side-by-side PNG")
    demo.add_argument("--pretrained-dir", default=None, metavar="DIR", help="root of the shipped assets")
    demo.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, ...")
    demo.set_defaults(func=run_demo)

    restore = sub.add_parser(
        "restore",
        help="restore an image file or a saved measurement",
        description="An image file is the clean image: its measurement is simulated with the model's physics "
        "and PSNR/SSIM are printed (--measured: the image IS the measurement, e.g. an SR low-resolution "
        "image). A .npy / .safetensors (tensor 'measurement') / .mat (variable 'measurement', or the only "
        "one) file is a measurement in the physics' layout, batched or not. Writes a PNG (CASSI: a "
        "pseudo-colour PNG and the cube as .npy).",
        formatter_class=_Formatter,
    )
    restore.add_argument("input", help="image file, or measurement (.npy, .safetensors, .mat)")
    restore.add_argument(
        "--output", default=None, metavar="PNG", help="restored PNG (default: <input>_restored.png)"
    )
    restore.add_argument("--measured", action="store_true", help="the image file is the measurement itself")
    restore.add_argument(
        "--image-size", default=None, metavar="HxW", help="HxW to crop the estimate to (CS on a padded grid)"
    )
    restore.add_argument(
        "--noise-sigma", type=float, default=0.0, metavar="S", help="noise of a simulated measurement"
    )
    restore.add_argument("--seed", type=int, default=0, help="seed of that noise")
    restore.add_argument(
        "--real-scale",
        default="mst",
        metavar="F",
        help="CASSI: factor for a real TSA measurement (.mat variable 'meas_real', stored divided by C/2): "
        "'mst' multiplies by C/2 (14 for 28 bands), or a number",
    )
    restore.add_argument(
        "--mask",
        default=None,
        metavar="PATH",
        help="inpainting: mask of the measurement (PNG or .npy, nonzero = observed pixel); for a clean image "
        "without it, a random mask of the set's missing rate seeded by --seed",
    )
    restore.add_argument(
        "--save-measurement",
        default=None,
        metavar="PATH",
        help="also save the simulated measurement (.npy or .safetensors)",
    )
    _add_model_arguments(restore)
    restore.set_defaults(func=run_restore)

    evaluate = sub.add_parser(
        "evaluate",
        help="score a model on a folder of test images or cubes (per-image PSNR/SSIM table)",
        description="Simulate each test item's measurement with the model's physics, restore it and score it "
        "with the task's published protocol (lorun_peft.evaluation). Writes metrics.csv, metrics.json, "
        "restored images and, with --stagewise, stagewise.csv/png into --output-dir.",
        formatter_class=_Formatter,
    )
    evaluate.add_argument("folder", help="folder of test images (CS gray, SR RGB) or .npz/.mat cubes (CASSI)")
    evaluate.add_argument(
        "--output-dir", default="lorun_eval", metavar="DIR", help="where metrics and images go"
    )
    evaluate.add_argument("--stagewise", action="store_true", help="also score every stage")
    evaluate.add_argument(
        "--no-images", dest="save_images", action="store_false", help="do not save the restored images"
    )
    evaluate.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N items")
    evaluate.add_argument("--noise-sigma", type=float, default=0.0, metavar="S", help="measurement noise std")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    evaluate.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (it is shown on stderr only when that is a terminal)",
    )
    evaluate.add_argument(
        "--mask",
        default=None,
        metavar="PATH.mat",
        help="CASSI: the full coded aperture to measure with (for a set trained on crops of it; default: "
        "the set's own mask)",
    )
    _add_model_arguments(evaluate)
    evaluate.set_defaults(func=run_evaluate)

    info = sub.add_parser(
        "info",
        help="configuration, adapter sets and parameter report of a model",
        description="Print the backbone's configuration, every resident adapter set (K, gamma, layout, "
        "fingerprint, steps, physics), the manifest of shipped assets and model.parameter_report().",
        formatter_class=_Formatter,
    )
    info.add_argument("--list", action="store_true", help="list the installed pretrained tasks and sets")
    _add_model_arguments(info)
    info.set_defaults(func=run_info)

    export = sub.add_parser(
        "export",
        help="write the folder a Hub push would upload, offline (upload it later with `hf upload`)",
        description="Write a backbone and its adapter sets (or only the sets) with the model card a push "
        "would generate, into one folder that from_pretrained/load_adapter read back and `hf upload REPO_ID "
        "FOLDER .` uploads as is. No network access.",
        formatter_class=_Formatter,
    )
    export.add_argument("output", help="the folder to write (a new or empty one; see --overwrite)")
    export.add_argument(
        "--repo-id", required=True, metavar="ID", help="the Hub repo it is meant for (owner/name)"
    )
    export.add_argument(
        "--set", action="append", default=None, metavar="NAME", help="export only this set (repeatable)"
    )
    export.add_argument(
        "--no-backbone",
        action="store_true",
        help="adapter sets only (an adapters repo; base_model in the card)",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT whole when it already holds files"
    )
    export.add_argument(
        "--base-model",
        default=None,
        metavar="ID",
        help="with --no-backbone: the backbone repo named in the card (default: lorun-peft/<task>-backbone "
        "for the shipped model, else the backbone's Hub id when it was loaded by one)",
    )
    export.add_argument(
        "--metrics",
        default=None,
        metavar="JSON",
        help='scores for the card: {"backbone": {dataset: {metric: value}}, "<set>": {dataset: {...}}}',
    )
    _add_model_arguments(export)
    export.set_defaults(func=run_export)

    train = sub.add_parser(
        "train",
        help="how to train backbones and adapter sets (the example scripts)",
        description="Print the accelerate commands of the two training phases for each task.",
        formatter_class=_Formatter,
    )
    train.add_argument("--task", choices=(*task_names(), "all"), default="all", help="which task's recipe")
    train.set_defaults(func=run_train)
    return parser


#: Set to 1 to get tracebacks instead of one-line errors (as ``lorun --debug``).
DEBUG_ENV = "LORUN_DEBUG"
#: Errors that mean bad input (arguments, files, data): one line on stderr and exit status 2.
_INPUT_ERRORS = (ValueError, OSError, TypeError, LookupError)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a real descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lorun`` with ``argv`` (default ``sys.argv[1:]``); 0 on success, 2 on bad input.

    Errors are one line on stderr: exit 2 for bad input (arguments, files, data), 1 for anything else;
    ``--debug`` or ``LORUN_DEBUG=1`` shows the traceback instead.

    A closed output pipe ends the command quietly with 1 (Python's advice for ``EPIPE``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep stderr for errors: no "Loading weights" bars
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader left (``lorun info | head``): not a bad input, so no error line
        _silence_stdout()
        return 1
    except Exception as error:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        if isinstance(error, _INPUT_ERRORS):
            print(f"lorun {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 2
        print(
            f"lorun {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
            f"(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if bars:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())

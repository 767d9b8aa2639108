"""``lorun demo``: the README's first run, on a shipped image and the shipped pretrained model.

The CS demo simulates 25 % block-CS measurements of a shipped public-domain image, restores them with
LoRun-9 and with its phase-1 backbone alone (Block-9-share), swaps in other ratios' adapter sets in place
and writes a side-by-side PNG with zoom boxes. ``--task cassi`` (a spectral cube made from an RGB image)
and ``--task inpainting`` (pixels dropped at random) have their own demos, looked up in
:data:`_OTHER_DEMOS` by task name.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from lorun_peft.help import HelpFormatter

from .common import _device, _percent


def _centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    if size == 0:
        return image
    if not 8 <= size <= min(height, width):
        raise ValueError(f"--size must be 0 (whole image) or in [8, {min(height, width)}], got {size}")
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size].contiguous()


def _checked_inputs(args: argparse.Namespace, image: str) -> Path:
    """The demo's output PNG path, after checking the sample image name and the noise level."""
    from lorun_peft.data.samples import list_sample_images

    if image not in list_sample_images():
        raise ValueError(f"unknown sample image {image!r}; expected one of {list_sample_images()}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {output}")
    return output


def run_demo(args: argparse.Namespace) -> int:
    from lorun_peft.data.samples import load_sample_image
    from lorun_peft.figures import comparison_figure
    from lorun_peft.metrics import cs_psnr, cs_ssim
    from lorun_peft.pretrained import adapter_set_name, load_pretrained, pretrained_dir

    start = time.perf_counter()
    other = _OTHER_DEMOS.get(args.task)
    if other is not None:
        return other(args, start)
    output = _checked_inputs(args, args.image)
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
    from lorun_peft.data.samples import load_sample_image
    from lorun_peft.figures import comparison_figure
    from lorun_peft.metrics import cassi_psnr, cassi_ssim
    from lorun_peft.pretrained import load_pretrained, pretrained_dir
    from lorun_peft.tasks import synthetic_cube
    from lorun_peft.tasks.cassi_gap_tv import gap_tv

    image = "coffee" if args.image == "camera" else args.image  # camera is gray
    output = _checked_inputs(args, image)
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
        classical = gap_tv(model.physics, y)
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
    rows = (
        ("initial estimate (shift back)", initial),
        ("GAP-TV (classical)", classical),
        (f"LoRun-{k}", restored),
    )
    for label, estimate in rows:
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
    from lorun_peft.data.samples import load_sample_image
    from lorun_peft.figures import comparison_figure
    from lorun_peft.pretrained import adapter_set_name, load_pretrained, pretrained_dir
    from lorun_peft.tasks import get_task
    from lorun_peft.tasks.inpainting import harmonic_inpainting

    output = _checked_inputs(args, args.image)
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


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``lorun demo`` to the subcommands."""
    parser = commands.add_parser(
        "demo",
        help="restore a shipped image from simulated 25 %% CS measurements with the shipped LoRun-9",
        description="Simulate block-CS measurements of a shipped public-domain image, restore them with the "
        "shipped LoRun model and its phase-1 backbone, swap in other ratios' adapter sets, print "
        "PSNR/SSIM (CS protocol) and write a side-by-side PNG with zoom boxes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--task",
        choices=("cs", "cassi", "inpainting"),
        default="cs",
        help="cs: block CS of a gray image; cassi: a spectral cube made from an RGB image (set mask-28); "
        "inpainting: a gray image with --missing of its pixels dropped",
    )
    parser.add_argument(
        "--image",
        default="camera",
        metavar="NAME",
        help="shipped sample image (lorun_peft.data.samples; CASSI uses coffee for the gray default camera)",
    )
    parser.add_argument(
        "--size", type=int, default=256, metavar="N", help="side of the centre crop (0: the whole image)"
    )
    parser.add_argument(
        "--ratio", type=float, default=0.25, metavar="R", help="CS ratio of the main adapter set"
    )
    parser.add_argument(
        "--other-ratio",
        type=float,
        nargs="+",
        metavar="R",
        default=[0.10, 0.50],
        help="ratio(s) of the set(s) swapped in afterwards (ratio-10, ratio-50 ...)",
    )
    parser.add_argument(
        "--missing", type=float, default=0.7, metavar="M", help="inpainting: share of missing pixels (set)"
    )
    parser.add_argument(
        "--noise-sigma", type=float, default=0.0, metavar="S", help="measurement noise std (images in [0, 1])"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    parser.add_argument("--output", default="lorun_demo.png", metavar="PNG", help="side-by-side PNG")
    parser.add_argument("--pretrained-dir", default=None, metavar="DIR", help="root of the shipped assets")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, ...")
    parser.set_defaults(func=run_demo)

"""Benchmark the three denoiser families: parameter counts, CPU speed, and Set11 denoising PSNR.

Three sections (``--sections``, all by default):

* ``counts``: parameters of each family at the default (paper-matched) size and at other settings.
* ``speed``: forward+backward time on CPU at 1x1x128x128 and 1x28x256x256 (the model's in/out channels
  set to match), median of ``--reps`` repetitions interleaved across models so that machine load hits
  them alike; also each time relative to the U-Net's at the same shape.
* ``psnr``: train each default model (gray: in/out channels 1) for ``--budget-seconds`` of CPU wall time
  on random Train400 patches with Gaussian noise sigma 25/255 (Adam, MSE), then report Set11 PSNR:
  noise added to the float image with a fixed seed per image (the same for every model), the output
  clipped to [0, 1] and rounded to 8 bits, PSNR on 0..255 against the 8-bit ground truth (KAIR/DnCNN
  protocol), averaged over the 11 images.

Example (the lead's full run): ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_denoisers.py
--budget-seconds 600 --reps 7 --json benchmarks/results/denoisers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lorun_peft.denoisers import (
    DenoiserPreTrainedModel,
    ResUNetConfig,
    ResUNetDenoiser,
    TransformerConfig,
    TransformerDenoiser,
    UNetConfig,
    UNetDenoiser,
    count_parameters,
)

FAMILIES: dict[str, tuple[type, type]] = {
    "unet": (UNetConfig, UNetDenoiser),
    "transformer": (TransformerConfig, TransformerDenoiser),
    "resunet": (ResUNetConfig, ResUNetDenoiser),
}
SPEED_SHAPES = [(1, 1, 128, 128), (1, 28, 256, 256)]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def build(family: str, image_channels: int | None = None, **kwargs) -> DenoiserPreTrainedModel:
    """The family's default model, with in/out channels set to ``image_channels`` if given."""
    config_cls, model_cls = FAMILIES[family]
    if image_channels is not None:
        kwargs.update(in_channels=image_channels, out_channels=image_channels)
    return model_cls(config_cls(**kwargs))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parameter_counts() -> list[dict]:
    settings: list[tuple[str, str, dict]] = [
        (family, label, kwargs)
        for family in FAMILIES
        for label, kwargs in [
            ("default", {}),
            ("1 channel (gray)", {"in_channels": 1, "out_channels": 1}),
            ("3 channels (RGB)", {"in_channels": 3, "out_channels": 3}),
            ("28 channels (CASSI)", {"in_channels": 28, "out_channels": 28}),
            ("default + noise_level_map", {"noise_level_map": True}),
        ]
    ]
    settings += [
        ("unet", "base_channels=16, depth=3 (issue-5 reference)", {"base_channels": 16, "depth": 3}),
        ("unet", "upsample='transpose'", {"upsample": "transpose"}),
        ("resunet", "USRNet widths (64,128,256,512)", {"channels": [64, 128, 256, 512]}),
    ]
    return [
        {"family": family, "setting": label, "parameters": count_parameters(build(family, **kwargs))}
        for family, label, kwargs in settings
    ]


def forward_backward_seconds(model: DenoiserPreTrainedModel, x: Tensor) -> float:
    start = time.perf_counter()
    model(x).square().mean().backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def speed(reps: int) -> list[dict]:
    cases = []
    for shape in SPEED_SHAPES:
        for family in FAMILIES:
            torch.manual_seed(0)
            model = build(family, image_channels=shape[1]).train()
            x = torch.rand(shape)
            forward_backward_seconds(model, x)  # warm-up
            cases.append(
                {"family": family, "shape": "x".join(map(str, shape)), "model": model, "x": x, "t": []}
            )
    for _ in range(reps):
        for case in cases:
            case["t"].append(forward_backward_seconds(case["model"], case["x"]))
    results = [
        {"family": c["family"], "shape": c["shape"], "median_ms": 1000 * statistics.median(c["t"])}
        for c in cases
    ]
    for r in results:
        unet = next(u for u in results if u["shape"] == r["shape"] and u["family"] == "unet")
        r["vs_unet"] = r["median_ms"] / unet["median_ms"]
    return results


def load_gray_folder(folder: Path) -> list[Tensor]:
    """All images of ``folder`` as float ``(1, H, W)`` tensors in [0, 1], sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp"))
    if not files:
        raise FileNotFoundError(f"no images in {folder}; expected the shared data set (see --data-dir)")
    images = []
    for path in files:
        with Image.open(path) as img:
            images.append(torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None])
    return images


def patch_sampler(images: list[Tensor], size: int, batch: int, generator: torch.Generator) -> Callable:
    """Random ``(batch, 1, size, size)`` crops with one of the 8 flips/rotations each."""

    def sample() -> Tensor:
        patches = []
        for _ in range(batch):
            img = images[int(torch.randint(len(images), (1,), generator=generator))]
            top = int(torch.randint(img.shape[-2] - size + 1, (1,), generator=generator))
            left = int(torch.randint(img.shape[-1] - size + 1, (1,), generator=generator))
            patch = img[:, top : top + size, left : left + size]
            k = int(torch.randint(8, (1,), generator=generator))
            patch = torch.rot90(patch, k % 4, dims=(-2, -1))
            patches.append(patch.flip(-1) if k >= 4 else patch)
        return torch.stack(patches)

    return sample


def psnr_8bit(estimate: Tensor, clean: Tensor) -> float:
    """PSNR on 0..255 of the 8-bit-rounded, clipped estimate against the 8-bit clean image."""
    est = (estimate.clamp(0, 1) * 255).round().double()
    ref = (clean * 255).round().double()
    mse = torch.mean((est - ref) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def train_and_evaluate(args: argparse.Namespace) -> list[dict]:
    data_dir = Path(args.data_dir)
    train = load_gray_folder(data_dir / "Train400")
    test = load_gray_folder(data_dir / "Set11")
    sigma = args.sigma / 255
    noisy_test = [
        img + sigma * torch.randn(img.shape, generator=torch.Generator().manual_seed(args.seed + i))
        for i, img in enumerate(test)
    ]
    results = [
        {
            "family": "noisy input",
            "parameters": 0,
            "steps": 0,
            "set11_psnr": statistics.mean(psnr_8bit(n, c) for n, c in zip(noisy_test, test)),
        }
    ]
    for family in FAMILIES:
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        sample = patch_sampler(train, args.patch_size, args.batch_size, generator)
        model = build(family, image_channels=1).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.budget_seconds:
            clean = sample()
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            loss = torch.mean((model(noisy) - clean) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            psnr = statistics.mean(psnr_8bit(model(n[None])[0], c) for n, c in zip(noisy_test, test))
        results.append(
            {"family": family, "parameters": count_parameters(model), "steps": steps, "set11_psnr": psnr}
        )
        print(f"  {family}: {steps} steps in {args.budget_seconds:g} s, Set11 PSNR {psnr:.2f} dB", flush=True)
    return results


def write_json(path: Path, payload: dict) -> None:
    """Atomic JSON write (temp file in the same folder, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="counts,speed,psnr", help="comma list of counts,speed,psnr")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per model and shape")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data-dir", default=os.environ.get("LORUN_DATA_DIR", str(DEFAULT_DATA_DIR)))
    parser.add_argument("--budget-seconds", type=float, default=600.0, help="training wall time per model")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0..255 scale")
    parser.add_argument("--patch-size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if unknown := sections - {"counts", "speed", "psnr"}:
        parser.error(f"unknown sections {sorted(unknown)}; expected counts, speed, psnr")
    if args.reps < 1 or args.budget_seconds < 0:
        parser.error("--reps must be >= 1 and --budget-seconds >= 0")
    if "psnr" in sections and not (Path(args.data_dir) / "Train400").is_dir():
        parser.error(f"--data-dir {args.data_dir} has no Train400/ (needed for the psnr section)")
    torch.set_num_threads(args.threads)
    report: dict = {"torch": torch.__version__, "threads": args.threads}

    if "counts" in sections:
        report["counts"] = parameter_counts()
        print(
            "\nParameters\n"
            + markdown_table(
                ["family", "setting", "parameters"],
                [[r["family"], r["setting"], f"{r['parameters']:,}"] for r in report["counts"]],
            )
        )
    if "speed" in sections:
        report["speed"] = speed(args.reps)
        print(
            f"\nForward+backward on CPU ({args.threads} thread(s)), median of {args.reps} interleaved reps\n"
        )
        print(
            markdown_table(
                ["family", "input", "median ms", "vs U-Net"],
                [
                    [r["family"], r["shape"], f"{r['median_ms']:.1f}", f"{r['vs_unet']:.2f}"]
                    for r in report["speed"]
                ],
            )
        )
    if "psnr" in sections:
        print(
            f"\nTraining each default model (gray) for {args.budget_seconds:g} s on Train400 ...", flush=True
        )
        report["psnr"] = train_and_evaluate(args)
        report["psnr_setup"] = {
            k: getattr(args, k)
            for k in ("budget_seconds", "sigma", "patch_size", "batch_size", "lr", "seed", "threads")
        }
        print(f"\nSet11 Gaussian denoising, sigma {args.sigma:g}/255, after {args.budget_seconds:g} s each\n")
        print(
            markdown_table(
                ["model", "parameters", "training steps", "Set11 PSNR (dB)"],
                [
                    [r["family"], f"{r['parameters']:,}", r["steps"], f"{r['set11_psnr']:.2f}"]
                    for r in report["psnr"]
                ],
            )
        )
    if args.json is not None:
        write_json(args.json, report)


if __name__ == "__main__":
    main()

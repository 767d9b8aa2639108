"""Benchmark of the task denoisers (SSR for CASSI, CPP-Net for CS) against the U-Net at the same channels.

Three parts, each selectable:

- ``--params``: the parameter table of docs/task_denoisers.md (Block-9, Block-9-share, LoRun-9 at
  gamma 10) from ``lorun_peft.tuners`` (``add_stage_adapters`` + ``parameter_report``), cross-checked
  with the paper-layout formula ``r * k^2 * (Cin + Cout)`` per groups=1 conv and ``r * (in + out)`` per
  Linear, against the paper's Tables I and III.
- ``--speed``: CPU forward time of one 256x256 image (CPP-Net, 1 channel) or 256x256x28 cube (SSR) next
  to the default U-Net at the same channel count; medians of interleaved repetitions, and their ratio.
- ``--train-budget-seconds S``: trains each denoiser as the PMM of a K-stage unfolding network
  (``LoRunModel``, mode ``shared``) for S seconds of wall clock on real data, then prints test PSNR:
  CASSI on the CAVE cubes (train: ``stuffed_toys`` patches, test: the ``cloth`` scene, both resampled
  to the 28 KAIST bands, TSA mask), CS at 25 % (train: Train400 patches, test: Set11, CS protocol).

Data are read from ``$LORUN_DATA_DIR`` or ``<repo>/../shared/data``. Example (tiny, a few minutes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_task_denoisers.py --params --speed --reps 3 \\
        --train-budget-seconds 20 --max-test-images 2 --eval-crop 128
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lorun_peft.denoisers import UNetConfig, UNetDenoiser
from lorun_peft.denoisers.cppnet import CPPNetConfig, CPPNetDenoiser
from lorun_peft.denoisers.ssr import SSRConfig, SSRDenoiser

PAPER = {  # LoRun paper: Table III (CASSI, SSR denoiser) and Table I (CS, CPP-Net denoiser), gamma = 10
    "ssr": {"block9": 5.18e6, "lorun9": 1.62e6},
    "cppnet": {"block9": 15.96e6, "lorun9": 5.23e6},
}


def data_dir() -> Path:
    env = os.environ.get("LORUN_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def families() -> dict[str, tuple[nn.Module, nn.Module]]:
    """name -> (task denoiser, U-Net at the same channel count), defaults of each config."""
    return {
        "ssr": (SSRDenoiser(SSRConfig()), UNetDenoiser(UNetConfig(in_channels=28, out_channels=28))),
        "cppnet": (CPPNetDenoiser(CPPNetConfig()), UNetDenoiser(UNetConfig())),
    }


# ----------------------------------------------------------------------------------------- parameters
def formula_adapter_params(model: nn.Module, gamma: float, include_grouped: bool = False) -> int:
    """One stage adapter's size by the paper layout (eq. 4) and rank rule (eq. 12), without the tuners.

    ``include_grouped`` also counts depthwise/grouped convs as loralib would adapt them
    (``r * k^2 * (Cin + Cout / groups)``), to show what the paper's figure might include.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            if module.groups > 1 and not include_grouped:
                continue
            r = math.ceil(min(module.in_channels, module.out_channels) * gamma / 100 - 1e-9)
            k2 = module.kernel_size[0] * module.kernel_size[1]
            total += r * k2 * (module.in_channels + module.out_channels // module.groups)
        elif isinstance(module, nn.Linear):
            r = math.ceil(min(module.in_features, module.out_features) * gamma / 100 - 1e-9)
            total += r * (module.in_features + module.out_features)
    return total


def parameter_table(gamma: float = 10.0, stages: int = 9) -> None:
    from lorun_peft.tuners import StageLoRAConfig, add_stage_adapters, parameter_report

    configs = {
        "ssr": [SSRDenoiser(SSRConfig())],
        "cppnet": [CPPNetDenoiser(CPPNetConfig()), CPPNetDenoiser(CPPNetConfig(base_channels=36))],
    }
    print(f"\nparameters (K = {stages}, gamma = {gamma}); paper figures in brackets")
    print(f"{'model':<26} {'per stage':>10} {'Block-9':>18} {'Block-9-share':>14} ", end="")
    print(f"{'LoRun-9':>18} {'LoRun-9+dw':>11}")
    for name, models in configs.items():
        for model in models:
            base = sum(p.numel() for p in model.parameters())
            formula = formula_adapter_params(model, gamma)
            with_dw = formula_adapter_params(model, gamma, include_grouped=True)
            adapted = copy.deepcopy(model)
            add_stage_adapters(adapted, "bench", StageLoRAConfig(num_stages=stages, gamma=gamma))
            report = parameter_report(adapted)
            if report.base.stored != base or report.adapters.stored != stages * formula:
                raise RuntimeError(
                    f"tuners and formula disagree for {name}: {report.format()}, formula {formula}"
                )
            block, lorun = stages * base, base + stages * formula
            paper = PAPER[name]
            label = f"{name} (width {model.config.base_channels})"
            print(
                f"{label:<26} {base:>10,} {block:>10,} [{paper['block9'] / 1e6:.2f}M] {base:>14,} "
                f"{lorun:>10,} [{paper['lorun9'] / 1e6:.2f}M] {base + stages * with_dw:>11,}"
            )
            print(
                f"{'':<26} per-stage adapter {formula:,} = {formula / base:.3f} x base; "
                f"Block-9 {block / paper['block9'] - 1:+.1%}, "
                f"LoRun-9 {lorun / paper['lorun9'] - 1:+.1%} vs paper"
            )


# ----------------------------------------------------------------------------------------- speed
def speed(reps: int) -> None:
    print(
        f"\nCPU forward time, batch 1, 256x256, {torch.get_num_threads()} thread(s), "
        f"median of {reps} interleaved"
    )
    for name, (model, unet) in families().items():
        channels = model.config.in_channels
        x = torch.rand(1, channels, 256, 256)
        timings: dict[str, list[float]] = {name: [], "unet": []}
        with torch.inference_mode():
            for net in (model, unet):
                net.eval()(x)  # warm-up
            for _ in range(reps):
                for key, net in ((name, model), ("unet", unet)):
                    start = time.perf_counter()
                    net(x)
                    timings[key].append(time.perf_counter() - start)
        t_model, t_unet = statistics.median(timings[name]), statistics.median(timings["unet"])
        print(
            f"{name:>7} ({channels} ch): {t_model * 1e3:8.1f} ms   U-Net: {t_unet * 1e3:8.1f} ms   "
            f"ratio {t_model / t_unet:.2f}"
        )


# ----------------------------------------------------------------------------------------- training
def _gray_images(folder: Path) -> list[torch.Tensor]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp"))
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return [
        torch.from_numpy(np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0)[None]
        for p in files
    ]


def _random_patches(
    images: list[torch.Tensor], size: int, batch: int, rng: np.random.Generator
) -> torch.Tensor:
    out = []
    for _ in range(batch):
        img = images[rng.integers(len(images))]
        i, j = (int(rng.integers(s - size + 1)) for s in img.shape[-2:])
        out.append(img[:, i : i + size, j : j + size])
    return torch.stack(out)


def _center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return x
    h, w = x.shape[-2:]
    i, j = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., i : i + size, j : j + size]


def _train(model, batches, budget: float, lr: float) -> int:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        measurement, truth = next(batches)
        loss = (model(measurement).images - truth).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def train_cs(args, root: Path) -> None:
    from lorun_peft.metrics import cs_psnr
    from lorun_peft.physics import BlockCS
    from lorun_peft.unfolding import LoRunModel

    train = _gray_images(root / "Train400")
    test = [_center_crop(t, args.eval_crop) for t in _gray_images(root / "Set11")[: args.max_test_images]]
    print(
        f"\nCS 25 %: train Train400 ({len(train)} images, {args.patch}px patches), test Set11 ({len(test)})"
    )
    for name, denoiser in (("cppnet", CPPNetDenoiser(CPPNetConfig())), ("unet", UNetDenoiser(UNetConfig()))):
        torch.manual_seed(args.seed)
        physics = BlockCS(0.25, block_size=32)
        model = LoRunModel.from_components(physics, denoiser, num_stages=args.stages, mode="shared")
        rng = np.random.default_rng(args.seed)

        def batches(model=model, rng=rng):
            while True:
                truth = _random_patches(train, args.patch, args.batch, rng)
                yield model.physics.A(truth).detach(), truth

        steps = _train(model, batches(), args.train_budget_seconds, args.lr)
        model.eval()
        with torch.inference_mode():
            scores = [
                float(
                    cs_psnr(
                        model(model.physics.A(t[None])).images[..., : t.shape[-2], : t.shape[-1]], t[None]
                    )
                )
                for t in test
            ]
        print(
            f"{name:>7}: {steps:5d} steps in {args.train_budget_seconds:.0f} s, "
            f"Set11 PSNR {np.mean(scores):.2f} dB"
        )


def train_cassi(args, root: Path) -> None:
    from lorun_peft.data.cubes import KAIST_WAVELENGTHS_28, load_cube
    from lorun_peft.metrics import cassi_psnr
    from lorun_peft.physics import CASSI, load_cassi_mask
    from lorun_peft.unfolding import LoRunModel

    cubes = root / "CASSI" / "cubes"
    train = load_cube(cubes / "stuffed_toys.npz", wavelengths=KAIST_WAVELENGTHS_28)
    test = _center_crop(load_cube(cubes / "cloth.npz", wavelengths=KAIST_WAVELENGTHS_28), args.eval_crop)[
        None
    ]
    mask = load_cassi_mask(root / "CASSI" / "simulation" / "mask.mat")
    print(
        f"\nCASSI: train CAVE stuffed_toys ({args.patch}px patches), "
        f"test CAVE cloth {tuple(test.shape[-2:])}, 28 bands"
    )
    unet_cfg = UNetConfig(in_channels=28, out_channels=28)
    for name, denoiser in (("ssr", SSRDenoiser(SSRConfig())), ("unet", UNetDenoiser(unet_cfg))):
        torch.manual_seed(args.seed)
        patch_mask = mask[: args.patch, : args.patch]
        # HQS, as the paper does for CASSI: its data step is stable for any mu, while a PGD step of
        # rho = 0.5 exceeds 2 / ||Phi||^2 for a 28-band mask and diverges until rho is learned down.
        model = LoRunModel.from_components(
            CASSI(patch_mask), denoiser, num_stages=args.stages, algorithm="hqs", mode="shared"
        )
        rng = np.random.default_rng(args.seed)

        def batches(model=model, rng=rng):
            while True:
                truth = _random_patches([train], args.patch, args.batch, rng)
                yield model.physics.A(truth).detach(), truth

        steps = _train(model, batches(), args.train_budget_seconds, args.lr)
        test_mask = _center_crop(mask, args.eval_crop)
        evaluator = LoRunModel.from_components(
            CASSI(test_mask), model.denoisers[0], num_stages=args.stages, algorithm="hqs"
        )
        evaluator.task.steps.load_state_dict(model.task.steps.state_dict())
        evaluator.eval()
        with torch.inference_mode():
            score = float(cassi_psnr(evaluator(evaluator.physics.A(test)).images.clamp(0, 1), test))
        print(
            f"{name:>7}: {steps:5d} steps in {args.train_budget_seconds:.0f} s, "
            f"cloth PSNR {score:.2f} dB (MST protocol)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", action="store_true", help="print the parameter table")
    parser.add_argument("--speed", action="store_true", help="time 256x256 forwards against the U-Net")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions for --speed")
    parser.add_argument("--train-budget-seconds", type=float, default=0.0, help="train each model this long")
    parser.add_argument("--tasks", nargs="+", default=["cs", "cassi"], choices=["cs", "cassi"])
    parser.add_argument("--stages", type=int, default=9, help="K of the unfolding network")
    parser.add_argument("--patch", type=int, default=64, help="training patch side")
    parser.add_argument("--batch", type=int, default=2, help="training batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-test-images", type=int, default=11, help="Set11 images to test on")
    parser.add_argument("--eval-crop", type=int, default=None, help="center-crop test images to this side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.params or args.speed or args.train_budget_seconds > 0):
        parser.error("choose at least one of --params, --speed, --train-budget-seconds S")
    if args.params:
        parameter_table(stages=args.stages)
    if args.speed:
        speed(args.reps)
    if args.train_budget_seconds > 0:
        root = data_dir()
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} not found; set LORUN_DATA_DIR")
        if "cs" in args.tasks:
            train_cs(args, root)
        if "cassi" in args.tasks:
            train_cassi(args, root)


if __name__ == "__main__":
    main()

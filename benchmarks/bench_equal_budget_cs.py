"""Equal-budget comparison on block CS (ratio 25 %): Block-K, Block-K-share and LoRun-K on Set11.

All models are K-stage PGD unfoldings of the same U-Net with a learned 32x32 block sampling matrix,
trained with :func:`lorun_peft.training.train` on random Train400 patches and scored on Set11 with the
ISTA-Net CS protocol (gray, [0, 255], PSNR and 7x7-uniform SSIM from :mod:`lorun_peft.metrics`).
LoRun-K spends ``phase1_fraction`` of the budget on phase 1 (shared backbone) and the rest on phase 2
(frozen backbone + stage LoRA, rank rule eq. 12 with ``--gamma``), so its phase-1 + phase-2 steps equal
Block-K's. ``--include-block-3x`` adds Block-K at three times the budget.

Each training run is a separate subprocess, so that its peak memory is its own: on CPU the table reports
the process's peak resident set size (``ru_maxrss``) and its increase over the RSS just before training
(model, data and Python already loaded); on CUDA, ``torch.cuda.max_memory_allocated``. LoRun's phase 2 runs
in its own process on the saved phase-1 backbone, so its memory is the phase-2 figure. Results go to
``<output-dir>/results.json`` and ``<output-dir>/results.md``.

Full run (the lead's budget)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_equal_budget_cs.py --steps 1500 --include-block-3x

Smoke test::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_equal_budget_cs.py --steps 5 --patch-size 32 \\
        --batch-size 2 --stages 3 --base-channels 4 --max-eval-images 2 --output-dir /tmp/bench_cs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("block", "block_share", "lorun_phase1", "lorun", "block_3x")


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=str(REPO / ".." / "shared" / "data"), help="holds Train400/, Set11/"
    )
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "bench_equal_budget_cs"))
    parser.add_argument("--steps", type=int, default=1500, help="Block-K budget in optimizer steps")
    parser.add_argument("--phase1-fraction", default="2/3", help="LoRun phase-1 share of --steps (e.g. 2/3)")
    parser.add_argument("--include-block-3x", action="store_true", help="also train Block-K for 3 x --steps")
    parser.add_argument("--stages", type=int, default=9, help="K")
    parser.add_argument("--ratio", type=float, default=0.25, help="CS ratio")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-channels", type=int, default=16, help="U-Net width")
    parser.add_argument("--depth", type=int, default=3, help="U-Net levels")
    parser.add_argument("--gamma", type=float, default=10.0, help="LoRA rank factor (eq. 12, percent)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam lr of Block-K, Block-K-share, phase 1")
    parser.add_argument(
        "--phase2-lr", type=float, default=None, help="Adam lr of LoRun phase 2 (default --lr)"
    )
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--noise-sigma", type=float, default=0.0)
    parser.add_argument("--max-eval-images", type=int, default=None, help="use the first N Set11 images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-progress", action="store_true")
    parser.add_argument(
        "--reuse-existing",
        action="store_true",
        help="keep a variant's <output-dir>/<variant>.json from an earlier (e.g. parallel --only) run",
    )
    parser.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fraction = Fraction(args.phase1_fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"--phase1-fraction must be in (0, 1), got {args.phase1_fraction}")
    args.phase1_steps = max(1, min(args.steps - 1, round(args.steps * fraction)))
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (LoRun needs a step in each phase), got {args.steps}")
    args.phase2_lr = args.lr if args.phase2_lr is None else args.phase2_lr
    return args


def _gray_images(folder: Path, limit: int | None = None):
    from PIL import Image

    from lorun_peft.data.images import image_to_tensor

    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp", ".jpg")
    )
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    files = files[:limit] if limit else files
    images = []
    for path in files:
        with Image.open(path) as img:
            images.append(image_to_tensor(img.convert("L"), channels=1))
    return [p.stem for p in files], images


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(args: argparse.Namespace, mode: str):
    import torch

    from lorun_peft.denoisers import UNetConfig, UNetDenoiser
    from lorun_peft.physics import BlockCS
    from lorun_peft.unfolding import LoRunModel

    torch.manual_seed(args.seed)
    physics = BlockCS(args.ratio, block_size=args.block_size, channels=1, learnable=True)
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, base_channels=args.base_channels, depth=args.depth))
    return LoRunModel.from_components(physics, denoiser, num_stages=args.stages, mode=mode)


def _parameter_counts(model) -> dict[str, dict[str, int]]:
    """Stored / trainable counts: denoiser base weights, LoRA adapters, task (Phi, steps) and total."""
    groups: dict[str, dict[str, int]] = {
        name: {"stored": 0, "trainable": 0} for name in ("denoiser", "adapters", "task", "total")
    }
    for name, param in model.named_parameters():
        if "lora_" in name:
            group = "adapters"
        elif name.startswith(("task.", "adapter_tasks.")):
            group = "task"
        else:
            group = "denoiser"
        for key in (group, "total"):
            groups[key]["stored"] += param.numel()
            groups[key]["trainable"] += param.numel() if param.requires_grad else 0
    return groups


def _run_variant(args: argparse.Namespace) -> dict:
    """Train and evaluate one variant in this process; returns its row."""
    import torch
    from safetensors.torch import load_file

    from lorun_peft.data import RandomPatchDataset
    from lorun_peft.training import UnfoldingTrainingConfig, evaluate_psnr, train
    from lorun_peft.tuners import StageLoRAConfig

    data = Path(args.data_dir)
    _, train_images = _gray_images(data / "Train400")
    names, test_images = _gray_images(data / "Set11", args.max_eval_images)
    patches = RandomPatchDataset(train_images, args.patch_size, seed=args.seed, cache_images=True)
    out = Path(args.output_dir)
    variant = args.only
    steps, lr = args.steps, args.lr
    if variant == "block_3x":
        steps = 3 * args.steps
    if variant == "lorun_phase1":
        steps = args.phase1_steps
    if variant == "lorun":
        steps, lr = args.steps - args.phase1_steps, args.phase2_lr
        # Rebuilt like phase 1, then the saved backbone weights loaded strictly (all keys must match).
        model = _build(args, "shared")
        model.load_state_dict(load_file(str(out / "lorun_phase1" / "backbone" / "model.safetensors")))
        torch.manual_seed(args.seed)
        model.add_stage_adapters(
            f"ratio-{round(args.ratio * 100)}", StageLoRAConfig(num_stages=args.stages, gamma=args.gamma)
        )
        if not any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n):
            raise RuntimeError(
                "add_stage_adapters left every LoRA weight frozen: LoRun phase 2 would not train"
            )
    else:
        model = _build(
            args, "block" if variant.startswith("block") and variant != "block_share" else "shared"
        )
    config = UnfoldingTrainingConfig(
        output_dir=str(out / variant),
        max_steps=steps,
        learning_rate=lr,
        batch_size=args.batch_size,
        max_grad_norm=args.max_grad_norm,
        noise_sigma=args.noise_sigma,
        seed=args.seed,
        log_every=max(1, steps // 20),
        show_progress=args.show_progress,
    )
    rss_before = _rss_mb()
    result = train(model, patches, config)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    model = result.model
    if variant == "lorun_phase1":
        model.save_pretrained(out / "lorun_phase1" / "backbone")
    if variant == "lorun":
        model.save_adapter_set(out / "lorun" / "adapters")
    start = time.perf_counter()
    metrics = evaluate_psnr(
        model, test_images, noise_sigma=args.noise_sigma, protocol="cs", compute_ssim=True
    )
    report = _parameter_counts(model)
    return {
        "variant": variant,
        "steps": steps,
        "learning_rate": lr,
        "stored_params": report["total"]["stored"],
        "trainable_params": report["total"]["trainable"],
        "param_groups": report,
        "peak_rss_mb": peak_rss,
        "rss_before_train_mb": rss_before,
        "peak_rss_increase_mb": peak_rss - rss_before,
        "cuda_peak_mb": None
        if result.peak_device_memory_bytes is None
        else result.peak_device_memory_bytes / 2**20,
        "step_time_s": result.mean_step_time_s,
        "train_time_s": result.train_time_s,
        "final_loss": result.losses[-1] if result.losses else None,
        "set11_psnr": metrics["psnr"],
        "set11_ssim": metrics["ssim"],
        "eval_images": names,
        "eval_time_s": time.perf_counter() - start,
    }


def _markdown(args: argparse.Namespace, rows: dict[str, dict]) -> str:
    k = args.stages
    labels = {
        "block": f"Block-{k}",
        "block_share": f"Block-{k}-share",
        "lorun": f"LoRun-{k} (phase 2 row; phase 1: {args.phase1_steps} steps)",
        "lorun_phase1": f"LoRun-{k} phase 1 (shared backbone)",
        "block_3x": f"Block-{k} (3x budget)",
    }
    lines = [
        f"CS ratio {args.ratio:g}, K={k}, U-Net width {args.base_channels} depth {args.depth}, "
        f"patches {args.patch_size}, batch {args.batch_size}, budget {args.steps} steps "
        f"(LoRun: {args.phase1_steps} + {args.steps - args.phase1_steps}), gamma {args.gamma:g}, "
        f"lr {args.lr:g} / phase-2 lr {args.phase2_lr:g}. Memory: peak RSS of the training process "
        "(increase over the RSS before training) on CPU; max_memory_allocated on CUDA.",
        "",
        "| model | steps | stored params | trainable params | of which task (Phi, steps) stored / trainable "
        "| peak memory (MB) | step time (s) | Set11 PSNR (dB) | Set11 SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("block", "block_share", "lorun_phase1", "lorun", "block_3x"):
        row = rows.get(key)
        if row is None:
            continue
        task = row["param_groups"]["task"]
        memory = (
            f"{row['cuda_peak_mb']:.0f}"
            if row["cuda_peak_mb"] is not None
            else f"{row['peak_rss_mb']:.0f} (+{row['peak_rss_increase_mb']:.0f})"
        )
        lines.append(
            f"| {labels[key]} | {row['steps']} | {row['stored_params']:,} | {row['trainable_params']:,} | "
            f"{task['stored']:,} / {task['trainable']:,} | {memory} | {row['step_time_s']:.3f} | "
            f"{row['set11_psnr']:.2f} | {row['set11_ssim']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.only:
        row = _run_variant(args)
        (out / f"{args.only}.json").write_text(json.dumps(row, indent=2))
        return
    for folder in ("Train400", "Set11"):
        if not (Path(args.data_dir) / folder).is_dir():
            raise FileNotFoundError(f"{Path(args.data_dir) / folder} not found; pass --data-dir")
    variants = ["block", "block_share", "lorun_phase1", "lorun"] + (
        ["block_3x"] if args.include_block_3x else []
    )
    rows = {}
    passthrough = sys.argv[1:] if argv is None else list(argv)
    for variant in variants:
        print(f"== {variant}", flush=True)
        if not (args.reuse_existing and (out / f"{variant}.json").is_file()):
            command = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--only", variant]
            subprocess.run(command, check=True)
        rows[variant] = json.loads((out / f"{variant}.json").read_text())
        row = rows[variant]
        psnr, ssim, step_time = row["set11_psnr"], row["set11_ssim"], row["step_time_s"]
        print(f"   PSNR {psnr:.2f} dB, SSIM {ssim:.4f}, {step_time:.3f} s/step", flush=True)
    payload = {"args": {k: v for k, v in vars(args).items() if k != "only"}, "results": rows}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out / "results.json")
    table = _markdown(args, rows)
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

"""Training step time and memory of Block-K, Block-K-share and LoRun-K by precision, layout, checkpointing.

One run measures, side by side, every (set-up, variant, setting) of the real LoRunModel on block CS
(25 %, 32 x 32 blocks, learned Phi, K = 9, PGD; eq. 13 loss, backward, Adam):

* set-ups: ``small`` (U-Net width 16, depth 3, batch 8, 64 x 64 patches: the shipped-model recipe),
  ``paper`` (U-Net width 32, depth 3, batch 1, 256 x 256) and ``cppnet`` (the CPP-Net CS denoiser,
  width 32, batch 8 of 32 x 32 patches: one CS block each, as the ISTA-Net family trains);
* variants: ``block`` (K denoisers), ``shared`` (one denoiser, phase 1), ``lorun`` (phase 2: the frozen
  denoiser + K stage adapters with a non-zero dW, the set's Phi and steps);
* settings: ``fp32`` (contiguous, no checkpointing: the loop before this benchmark), ``cl``
  (channels_last), ``bf16`` / ``bf16+cl`` (autocast on the denoisers) where the CPU computes bf16
  natively (``--bf16 always`` forces them; PyTorch then emulates bf16, which is slow), and on top of the
  fastest of those ``+ckpt`` (per-stage gradient checkpointing) and ``+ckpt-den`` (also inside the
  denoiser, level by level; not for CPP-Net, which has no per-level recompute).

Every configuration runs in its own fresh process (benchmarks/memory_probe.py): warm-up of the same
configuration on a tiny input, then the peak-RSS baseline, then model, optimizer and ``--steps``
training steps. Reported: median step time (steps 2..N; 1 allocates Adam state), whole training
footprint (peak RSS minus the baseline), persistent state (parameters, gradients, Adam moments, from the
tensors), the activation peak of the last step, and the inference forward time (eval, inference mode,
LoRun with materialised per-stage weights). Configurations rotate over ``--rounds`` rounds and times are
medians over rounds, so a slow moment of the machine does not land on one variant.

``--physics-only`` prints the error of the physics in bf16 against float64 (why the unfolding model runs
it in fp32); ``--compile`` probes ``torch.compile`` on the small set-up; ``--accuracy DATA_DIR`` trains
the CS 25 % recipe for ``--accuracy-steps`` in fp32 and in the default precision and scores Set11.

    python benchmarks/bench_training_speed.py --output benchmarks/results/training_speed.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from memory_probe import emit, persistent_state_bytes, reset_peak, run_child, status_kb

from lorun_peft.evaluation.report import write_atomic

SETUPS = {
    "small": {"denoiser": "unet", "width": 16, "batch": 8, "size": 64},
    "paper": {"denoiser": "unet", "width": 32, "batch": 1, "size": 256},
    "cppnet": {"denoiser": "cppnet", "width": 32, "batch": 8, "size": 32},
    "tiny": {"denoiser": "unet", "width": 4, "batch": 2, "size": 32},  # a seconds-long check (tests)
}
VARIANTS = ("block", "shared", "lorun")
SETTINGS = {  # name -> (autocast bf16, channels_last, stage checkpointing, denoiser checkpointing)
    "fp32": (False, False, False, False),
    "cl": (False, True, False, False),
    "cl+ckpt": (False, True, True, False),
    "cl+ckpt-den": (False, True, True, True),
    "bf16": (True, False, False, False),
    "bf16+cl": (True, True, False, False),
    "bf16+cl+ckpt": (True, True, True, False),
    "bf16+cl+ckpt-den": (True, True, True, True),
}
STAGES = 9
RATIO = 0.25
BLOCK = 32


def build_model(setup: dict, variant: str, width_override: int | None = None):
    """The LoRunModel of ``variant`` for ``setup`` (seeded; LoRun's lora_B ~ N(0, 1e-3^2))."""
    from lorun_peft.denoisers import CPPNetConfig, CPPNetDenoiser, UNetConfig, UNetDenoiser
    from lorun_peft.physics import BlockCS
    from lorun_peft.tuners import StageLoRAConfig
    from lorun_peft.unfolding import LoRunModel

    torch.manual_seed(0)
    width = width_override or setup["width"]
    if setup["denoiser"] == "cppnet":
        denoiser = CPPNetDenoiser(CPPNetConfig(in_channels=1, out_channels=1, base_channels=width))
    else:
        denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=width, depth=3))
    physics = BlockCS(RATIO, block_size=BLOCK)
    mode = "block" if variant == "block" else "shared"
    model = LoRunModel.from_components(physics, denoiser, num_stages=STAGES, mode=mode)
    if variant == "lorun":
        model.add_stage_adapters("bench", StageLoRAConfig(num_stages=STAGES, gamma=10.0))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=1e-3)
    return model.train()


def apply_setting(model, setting: str) -> bool:
    """Layout and checkpointing of ``setting`` on ``model``; returns whether to autocast to bf16."""
    from lorun_peft.training.precision import set_channels_last

    bf16, channels_last, ckpt, ckpt_denoiser = SETTINGS[setting]
    if channels_last:
        set_channels_last(model)
    if ckpt:
        model.gradient_checkpointing_enable(denoiser=ckpt_denoiser)
    return bf16


def batch_of(setup: dict, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(setup["batch"], 1, setup["size"] // 8, setup["size"] // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(setup["size"],) * 2, mode="bicubic").clamp(0, 1)


def make_step(model, images: torch.Tensor, bf16: bool):
    """One training step of the eq. 13 loss, as the training loop runs it (autocast on the forward)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.no_grad():
            y = model.physics.measure(images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(y, labels=images).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, optimizer


def inference_time(model, images: torch.Tensor, bf16: bool, reps: int) -> float:
    from lorun_peft.tuners import set_merge_mode

    model.eval()
    if model.mode == "lorun":
        set_merge_mode(model.denoisers[0], "materialized")
    with torch.no_grad():
        y = model.physics.measure(images)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(reps + 1):
            start = time.perf_counter()
            model(y)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def child(spec: dict) -> None:
    """Measure one configuration in this fresh process and emit the result."""
    torch.set_num_threads(spec["threads"])
    setup = SETUPS[spec["setup"]]
    tiny = {**setup, "batch": 1, "size": 32}
    warm = build_model(tiny, spec["variant"], width_override=4)
    bf16 = apply_setting(warm, spec["setting"])
    make_step(warm, batch_of(tiny), bf16)[0]()
    del warm
    images = batch_of(setup)
    gc.collect()
    baseline = status_kb("VmRSS")
    reset = reset_peak()
    model = build_model(setup, spec["variant"])
    bf16 = apply_setting(model, spec["setting"])
    step, optimizer = make_step(model, images, bf16)
    times = []
    for _ in range(spec["steps"] - 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    before_last = status_kb("VmRSS")
    peak_before_last = status_kb("VmHWM")
    reset_last = reset and reset_peak()
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
    peak_last = status_kb("VmHWM")
    state = persistent_state_bytes(model, optimizer)
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    forward = inference_time(model, images, bf16, spec["infer_reps"])
    emit(
        {
            "step_s": statistics.median(times[1:]),
            "whole_bytes": (max(peak_before_last, peak_last) - baseline) * 1024 if reset else None,
            "activation_bytes": (peak_last - before_last) * 1024 if reset_last else None,
            "state_bytes": sum(state.values()),
            "forward_s": forward,
        }
    )


def _settings(bf16_mode: str) -> list[str]:
    """fp32 and channels_last always; checkpointing on top of the fastest precision available."""
    from lorun_peft.training.precision import cpu_supports_bf16

    if bf16_mode == "always" or (bf16_mode == "native" and cpu_supports_bf16()):
        return ["fp32", "cl", "bf16", "bf16+cl", "bf16+cl+ckpt", "bf16+cl+ckpt-den"]
    return ["fp32", "cl", "cl+ckpt", "cl+ckpt-den"]


def run_grid(args: argparse.Namespace) -> dict:
    configs = [
        (setup, variant, setting)
        for setup in args.setups
        for setting in _settings(args.bf16)
        if args.settings is None or setting in args.settings
        for variant in VARIANTS
        if not (SETTINGS[setting][3] and SETUPS[setup]["denoiser"] == "cppnet")  # no per-level recompute
    ]
    samples: dict[tuple[str, str, str], list[dict]] = {config: [] for config in configs}
    for round_index in range(args.rounds):
        shift = round_index * max(1, len(configs) // args.rounds)
        for setup, variant, setting in configs[shift:] + configs[:shift]:
            steps = args.steps if setup == "small" else max(3, args.steps - 1)
            spec = {"setup": setup, "variant": variant, "setting": setting, "steps": steps}
            spec.update(threads=args.threads, infer_reps=args.infer_reps)
            result = run_child([__file__, "--child", json.dumps(spec)], threads=args.threads)
            samples[(setup, variant, setting)].append(result)
            print(f"  round {round_index + 1} {setup:<7} {variant:<7} {setting:<12} {result}", flush=True)
    merged = {}
    for key, runs in samples.items():
        merged["/".join(key)] = {
            "step_s": statistics.median(r["step_s"] for r in runs),
            "forward_s": statistics.median(r["forward_s"] for r in runs),
            "whole_bytes": max(r["whole_bytes"] or 0 for r in runs) or None,
            "activation_bytes": max(r["activation_bytes"] or 0 for r in runs) or None,
            "state_bytes": runs[0]["state_bytes"],
            "rounds": len(runs),
        }
    return merged


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _mib(value: float | None) -> str:
    return "n/a" if not value else f"{value / 2**20:.1f}"


def print_tables(results: dict, setups: list[str]) -> None:
    for setup in setups:
        info = SETUPS[setup]
        print(
            f"\n### {setup}: {info['denoiser']} width {info['width']}, batch {info['batch']}, "
            f"{info['size']}x{info['size']}, K={STAGES}, CS {RATIO:.0%}\n"
        )
        print(
            "| variant | setting | step (s) | vs fp32 | whole (MiB) | vs Block-9 | state (MiB) | "
            "activations (MiB) | vs fp32 | forward (s) | vs Block-9 |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, r in results.items():
            s, variant, setting = key.split("/")
            if s != setup:
                continue
            fp32 = results[f"{setup}/{variant}/fp32"]
            block = results.get(f"{setup}/block/{setting}", {})
            print(
                f"| {variant} | {setting} | {r['step_s']:.3f} | {_ratio(r['step_s'], fp32['step_s'])} | "
                f"{_mib(r['whole_bytes'])} | {_ratio(r['whole_bytes'], block.get('whole_bytes'))} | "
                f"{_mib(r['state_bytes'])} | {_mib(r['activation_bytes'])} | "
                f"{_ratio(r['activation_bytes'], fp32['activation_bytes'])} | {r['forward_s']:.3f} | "
                f"{_ratio(r['forward_s'], block.get('forward_s'))} |"
            )


def physics_precision(data_dir: Path | None) -> dict:
    """Relative error of the physics in bf16 (and fp32) against float64, CS / SR / CASSI."""
    from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, gaussian_kernel

    generator = torch.Generator().manual_seed(0)
    images = _set11(data_dir)
    source = "Set11 (first 4, resized to 256x256)"
    if images is None:
        coarse = torch.rand(4, 1, 32, 32, generator=generator)
        images = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bicubic").clamp(0, 1)
        source = "synthetic smooth 256x256 images (no --data-dir)"
    estimate = images + 0.01 * torch.randn(images.shape, generator=generator)  # an estimate 1 % off
    cube = images.repeat(1, 28, 1, 1)[:1] * torch.linspace(0.5, 1.0, 28)[None, :, None, None]
    mask = (torch.rand(256, 256, generator=generator) > 0.5).float()
    operators = {
        "CS 25 % (b=32) Phi x": (BlockCS(RATIO, block_size=BLOCK), images, estimate),
        "SR x2 blur+down": (BlurDownsample(gaussian_kernel(7, 1.2), 2), images, estimate),
        "CASSI mask+shift+sum": (CASSI(mask, step=2), cube, cube * (1 + 0.01 * torch.randn(cube.shape))),
    }
    report = {"source": source}
    for name, (op, clean, off) in operators.items():
        op64 = op.double()
        y64 = op64.A(clean.double())
        misfit64 = op64.A(off.double()) - y64
        row = {}
        # fp32; bf16 autocast (what autocast would do to the physics); everything cast to bf16
        for label, dtype, autocast in (
            ("fp32", torch.float32, False),
            ("bf16 autocast", torch.float32, True),
            ("bf16 tensors", torch.bfloat16, False),
        ):
            try:
                opd = copy.deepcopy(op).to(dtype)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = opd.A(clean.to(dtype))
                    misfit = opd.A(off.to(dtype)) - y
                row[label] = {
                    "A_rel_error": ((y.double() - y64).norm() / y64.norm()).item(),
                    "misfit_rel_error": ((misfit.double() - misfit64).norm() / misfit64.norm()).item(),
                    "ran_in": str(y.dtype).replace("torch.", ""),
                }
            except (RuntimeError, TypeError) as error:  # no bf16 kernel (FFT operators refuse bf16)
                row[label] = {"error": str(error).splitlines()[0]}
        try:
            torch.fft.fft2(torch.rand(8, 8, dtype=torch.bfloat16))
            row["bf16_fft"] = "supported"
        except RuntimeError as error:
            row["bf16_fft"] = f"unsupported: {str(error).splitlines()[0]}"
        report[name] = row
    return report


def _set11(data_dir: Path | None) -> torch.Tensor | None:
    if data_dir is None or not (data_dir / "Set11").is_dir():
        return None
    import numpy as np
    from PIL import Image

    files = sorted(p for p in (data_dir / "Set11").iterdir() if p.suffix.lower() in (".png", ".tif", ".bmp"))[
        :4
    ]
    arrays = [
        np.asarray(Image.open(f).convert("L").resize((256, 256)), dtype=np.float32) / 255 for f in files
    ]
    return torch.from_numpy(np.stack(arrays))[:, None]


def forward_ratios(args: argparse.Namespace) -> dict:
    """Inference forward of Block-9, Block-9-share and LoRun-9 (materialised) per precision/layout.

    One process, the three models side by side, repetitions interleaved with a rotating order and
    medians (the grid's per-process forward times carry the noise of separate processes).
    """
    from lorun_peft.tuners import set_merge_mode

    report = {}
    for setup_name in args.setups:
        setup = SETUPS[setup_name]
        images = batch_of(setup)
        settings = [s for s in _settings(args.bf16) if "ckpt" not in s]
        for setting in [s for s in settings if args.settings is None or s in args.settings]:
            models = {}
            for variant in VARIANTS:
                model = build_model(setup, variant)
                bf16 = apply_setting(model, setting)
                model.eval()
                if variant == "lorun":
                    set_merge_mode(model.denoisers[0], "materialized")
                models[variant] = model
            with torch.no_grad():
                y = models["block"].physics.measure(images)
            times = {variant: [] for variant in VARIANTS}
            with torch.inference_mode():
                for rep in range(args.forward_reps + 1):
                    order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]
                    for variant in order:
                        start = time.perf_counter()
                        # a fresh autocast region per call, as restore() has: its weight-cast cache
                        # must not carry bf16 copies of the weights from one call to the next
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            models[variant](y)
                        if rep:  # the first round warms up
                            times[variant].append(time.perf_counter() - start)
            medians = {variant: statistics.median(t) for variant, t in times.items()}
            row = {v: {"forward_s": t, "vs_block": t / medians["block"]} for v, t in medians.items()}
            report[f"{setup_name}/{setting}"] = row
            print(
                f"  forward {setup_name:<7} {setting:<8} "
                + "  ".join(
                    f"{v} {r['forward_s'] * 1e3:.1f} ms ({r['vs_block']:.3f}x)" for v, r in row.items()
                ),
                flush=True,
            )
    return report


def compile_probe(args: argparse.Namespace) -> dict:
    """Step time of torch.compile'd vs eager training on the small set-up (shared and lorun, fp32 cl)."""
    setup = SETUPS["small"]
    report = {}
    for variant in ("shared", "lorun"):
        row = {}
        for compiled in (False, True):
            model = build_model(setup, variant)
            apply_setting(model, "cl")
            images = batch_of(setup)
            start = time.perf_counter()
            if compiled:
                model.forward = torch.compile(model.forward)
            step, _ = make_step(model, images, False)
            try:
                step()  # compiles
                first = time.perf_counter() - start
                times = []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t)
                row["compiled" if compiled else "eager"] = {
                    "first_s": first,
                    "step_s": statistics.median(times),
                }
            except Exception as error:  # noqa: BLE001 - report any compiler failure, do not abort the run
                row["compiled"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
        report[variant] = row
        print(f"  torch.compile {variant}: {row}", flush=True)
    return report


def accuracy(args: argparse.Namespace) -> dict:
    """The CS 25 % recipe for --accuracy-steps in fp32 and in the default precision; Set11 PSNR of both."""
    import importlib.util

    from lorun_peft.recipes import DataArguments, ModelArguments
    from lorun_peft.tasks import CSArguments
    from lorun_peft.training import UnfoldingTrainingConfig

    example = Path(__file__).resolve().parents[1] / "examples" / "train_cs.py"
    spec = importlib.util.spec_from_file_location("train_cs_example", example)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    from lorun_peft.training.precision import resolve_mixed_precision

    report = {"default_resolves_to": resolve_mixed_precision("auto", torch.device("cpu"))}
    for label, precision, channels_last in (("fp32", "no", False), ("default", "auto", True)):
        out = Path(args.accuracy_output) / label
        training = UnfoldingTrainingConfig(
            output_dir=str(out),
            max_steps=args.accuracy_steps,
            batch_size=8,
            learning_rate=1e-3,
            max_grad_norm=1.0,
            seed=0,
            mixed_precision=precision,
            channels_last=channels_last,
            show_progress=False,
            use_cpu=True,
        )
        data = DataArguments(
            data_dir=str(args.accuracy), patch_size=64, eval_data=str(Path(args.accuracy) / "Set11")
        )
        model_args = ModelArguments(mode="shared", width=16, depth=3)
        summary = recipe.train_cs(CSArguments(ratio=RATIO), data, model_args, training)
        report[label] = {"set11_psnr": summary.eval["psnr"], "train_time_s": summary.train_time_s}
        print(f"  accuracy {label}: {report[label]}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--setups", default="small,paper,cppnet", help="comma-separated subset of " + ",".join(SETUPS)
    )
    parser.add_argument("--settings", default=None, help="comma-separated subset of " + ",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=4, help="training steps per configuration (>= 3)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all configurations")
    parser.add_argument(
        "--infer-reps", type=int, default=2, help="timed inference forwards per configuration"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per measuring process")
    parser.add_argument("--bf16", choices=("native", "always", "never"), default="native")
    parser.add_argument("--physics-only", action="store_true", help="only the physics precision table")
    parser.add_argument("--forward", action="store_true", help="also the in-process forward comparison")
    parser.add_argument("--forward-reps", type=int, default=9, help="interleaved repetitions (--forward)")
    parser.add_argument("--compile", action="store_true", help="also probe torch.compile (small set-up)")
    parser.add_argument("--accuracy", type=Path, default=None, help="data root: also run the accuracy check")
    parser.add_argument("--accuracy-steps", type=int, default=1000)
    parser.add_argument("--accuracy-output", default="runs/bench_training_speed")
    parser.add_argument("--data-dir", type=Path, default=None, help="data root with Set11 (physics table)")
    parser.add_argument("--skip-grid", action="store_true", help="no speed/memory grid")
    parser.add_argument("--output", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return 0
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if args.settings is not None:
        args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
        if any(s not in SETTINGS for s in args.settings):
            parser.error(f"--settings from {list(SETTINGS)}, got {args.settings}")
    unknown = [s for s in args.setups if s not in SETUPS]
    if unknown or args.steps < 3 or args.rounds < 1:
        parser.error(f"--setups from {list(SETUPS)} (got {unknown}), --steps >= 3, --rounds >= 1")
    torch.set_num_threads(args.threads)
    results: dict = {"torch": torch.__version__, "threads": args.threads}
    from lorun_peft.training.precision import cpu_supports_bf16

    results["cpu_native_bf16"] = cpu_supports_bf16()
    results["physics_precision"] = physics_precision(args.data_dir or args.accuracy)
    print(json.dumps(results["physics_precision"], indent=1))
    if not args.physics_only:
        if not args.skip_grid:
            results["grid"] = run_grid(args)
            print_tables(results["grid"], args.setups)
        if args.forward:
            results["forward"] = forward_ratios(args)
        if args.compile:
            results["compile"] = compile_probe(args)
        if args.accuracy is not None:
            results["accuracy"] = accuracy(args)
    if args.output is not None:
        write_atomic(args.output, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

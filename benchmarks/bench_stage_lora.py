"""Benchmark LoRun-K (one frozen denoiser + K stage adapters) against Block-K (K plain denoisers) on CPU.

Measures, side by side in one run with interleaved repetitions and medians:

* forward time of a K-stage loop (``x = denoiser_k(x)`` for k < K) for LoRun with the three merge
  modes (in-forward, materialised, unmerged) and for Block-K; printed as ratios to Block-K (target:
  in-forward merge within 1.05x);
* time of one training step (K-stage forward, backward, Adam step) for LoRun-K and Block-K;
* training memory, each variant in its own fresh process that does exactly the same imports, the same
  warm-up (one step of both variants at a tiny size, freed again, so code loaded on first use is not
  counted) and builds the same data first. Baseline: the process's resident set size (RSS) after
  imports, warm-up and data, before the model is built (the peak-RSS counter ``VmHWM`` is reset there
  through ``/proc/self/clear_refs``).
  Reported per variant, over ``--mem-steps`` training steps:

  - whole training footprint: peak RSS from the baseline through the N steps, minus the baseline. It
    holds parameters, gradients, Adam moments, activations and allocator overhead: the figure behind the
    paper's claim that LoRun trains with less memory than Block-K (frozen base: no gradients or Adam
    state for it; Block-K: K of each);
  - persistent training state: exact bytes of the parameter, gradient and Adam-moment tensors after
    the N steps (counted from the tensors, not from RSS);
  - activation peak of the last step: peak RSS during step N minus RSS just before it (activations and
    transient buffers only; everything allocated earlier is excluded).

  The children run with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so freed tensor
  memory goes back to the OS and RSS follows live tensor memory (Linux only).

``--params-table`` prints the parameter table of docs/stage_lora.md instead (default U-Net and
Transformer, gamma 10, both conv layouts). Uses lorun_peft.denoisers' U-Net when available, else a
small local stand-in. Example (small): ``python benchmarks/bench_stage_lora.py --size 64 --reps 5``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import multiprocessing as mp
import os
import queue as queue_module
import statistics
import time

import torch
from memory_probe import persistent_state_bytes, reset_peak, status_kb
from torch import nn

from lorun_peft.tuners import StageLoRAConfig, add_stage_adapters, parameter_report, set_merge_mode, stage

try:
    from lorun_peft.denoisers import TransformerConfig, TransformerDenoiser, UNetConfig, UNetDenoiser
except ImportError:  # the denoisers are optional for this benchmark
    UNetDenoiser = None


class StandInUNet(nn.Module):
    """Two-level conv U-Net used when lorun_peft.denoisers is unavailable: (B, C, H, W) -> same."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        act = nn.ReLU()
        self.enc = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), act, nn.Conv2d(width, width, 3, padding=1)
        )
        self.down = nn.Conv2d(width, 2 * width, 2, stride=2)
        self.mid = nn.Sequential(act, nn.Conv2d(2 * width, 2 * width, 3, padding=1), act)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1), act, nn.Conv2d(width, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return x + self.dec(torch.cat([e, self.up(self.mid(self.down(e)))], dim=1))


def build_denoiser(args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    if UNetDenoiser is not None and not args.stand_in:
        config = UNetConfig(
            in_channels=args.channels, out_channels=args.channels, base_channels=args.width, depth=args.depth
        )
        return UNetDenoiser(config).eval()
    return StandInUNet(args.channels, args.width).eval()


def _add_bench_adapters(model: nn.Module, args: argparse.Namespace) -> None:
    """K stage adapters with a non-zero ``dW`` (``lora_B`` ~ N(0, 1e-3^2))."""
    add_stage_adapters(
        model, "bench", StageLoRAConfig(num_stages=args.stages, gamma=args.gamma, conv_layout=args.layout)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)


def build_variants(args: argparse.Namespace) -> tuple[nn.Module, list[nn.Module]]:
    """(LoRun model with K adapters, non-zero dW; Block-K list of plain copies of the same denoiser)."""
    clean = build_denoiser(args)
    lorun = copy.deepcopy(clean)
    _add_bench_adapters(lorun, args)
    blocks = [copy.deepcopy(clean) for _ in range(args.stages)]
    for block in blocks:
        block.requires_grad_(True)
    return lorun, blocks


def lorun_loop(model: nn.Module, x: torch.Tensor, stages: int) -> torch.Tensor:
    for k in range(stages):
        with stage(model, k):
            x = model(x)
    return x


def block_loop(blocks: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


def interleaved(fns: dict[str, callable], reps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call; variants alternate within every repetition (rotating the order)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_benchmark(args: argparse.Namespace, lorun: nn.Module, blocks: list[nn.Module]) -> None:
    x = torch.randn(args.batch, args.channels, args.size, args.size)

    def block_fn():
        with torch.no_grad():
            block_loop(blocks, x)

    set_merge_mode(lorun, "materialized")  # builds the K merged copies once
    fns = {"block": block_fn}
    for mode in ("in_forward", "materialized", "unmerged"):
        fns[f"lorun/{mode}"] = _fixed_mode(lorun, mode, x, args.stages)
    medians = interleaved(fns, args.reps, args.warmup)
    print(f"\nForward, K={args.stages} loop, input {tuple(x.shape)} (median of {args.reps}, interleaved)")
    for name, t in medians.items():
        print(f"  {name:<22} {t * 1e3:9.2f} ms   ratio to Block-{args.stages}: {t / medians['block']:.3f}")


def _fixed_mode(lorun: nn.Module, mode: str, x: torch.Tensor, stages: int):
    layers = [m for m in lorun.modules() if hasattr(m, "merge_mode")]

    def run():
        for layer in layers:  # switch without dropping the materialised cache (set_merge_mode would)
            layer.merge_mode = mode
        with torch.no_grad():
            lorun_loop(lorun, x, stages)

    return run


def _train_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``(input, target)`` for every variant and process."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=generator)
    return x, torch.randn(x.shape, generator=generator)


def _lorun_step_fn(lorun: nn.Module, x: torch.Tensor, target: torch.Tensor, stages: int):
    set_merge_mode(lorun, "in_forward")
    lorun.train()
    opt = torch.optim.Adam([p for p in lorun.parameters() if p.requires_grad], lr=1e-4)

    def lorun_step():
        loss = (lorun_loop(lorun, x, stages) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return lorun_step, opt


def _block_step_fn(blocks: list[nn.Module], x: torch.Tensor, target: torch.Tensor):
    for block in blocks:
        block.train()
    opt = torch.optim.Adam([p for b in blocks for p in b.parameters()], lr=1e-4)

    def block_step():
        loss = (block_loop(blocks, x) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return block_step, opt


def _train_step_fns(args: argparse.Namespace, lorun: nn.Module, blocks: list[nn.Module]):
    x, target = _train_data(args)
    return {
        "lorun": _lorun_step_fn(lorun, x, target, args.stages)[0],
        "block": _block_step_fn(blocks, x, target)[0],
    }


def _build_variant(args: argparse.Namespace, variant: str) -> nn.Module | list[nn.Module]:
    """Only the model of ``variant`` (LoRun: base + K adapters; Block: K plain denoisers)."""
    if variant == "lorun":
        lorun = build_denoiser(args)
        _add_bench_adapters(lorun, args)
        return lorun
    first = build_denoiser(args)
    blocks = [first] + [copy.deepcopy(first) for _ in range(args.stages - 1)]
    for block in blocks:
        block.requires_grad_(True)
    return blocks


def _warm_up(args: argparse.Namespace) -> None:
    """Run both variants once on a tiny input and free them, so that lazily loaded code (PEFT's
    injection, kernels on first use) is in place before the baseline, the same in every child."""
    small = argparse.Namespace(**{**vars(args), "size": 16, "batch": 1, "stages": 2})
    x, target = _train_data(small)
    lorun = _build_variant(small, "lorun")
    _lorun_step_fn(lorun, x, target, small.stages)[0]()
    blocks = _build_variant(small, "block")
    _block_step_fn(blocks, x, target)[0]()
    del lorun, blocks


def _memory_child(args: argparse.Namespace, variant: str, queue: mp.Queue) -> None:
    """Training memory of one variant in this fresh process (see the module docstring)."""
    torch.set_num_threads(args.threads)
    _warm_up(args)
    x, target = _train_data(args)
    gc.collect()
    baseline = status_kb("VmRSS")
    reset = reset_peak()
    earlier_peak = None if reset else status_kb("VmHWM")
    model = _build_variant(args, variant)
    if variant == "lorun":
        step, opt = _lorun_step_fn(model, x, target, args.stages)
    else:
        step, opt = _block_step_fn(model, x, target)
    for _ in range(args.mem_steps - 1):
        step()
    peak_before_last = status_kb("VmHWM")
    before_last = status_kb("VmRSS")
    reset_last = reset and reset_peak()
    step()
    peak_last = status_kb("VmHWM")
    whole_peak = max(peak_before_last, peak_last)
    result = {
        "whole": (whole_peak - baseline) * 1024 if (reset or whole_peak > earlier_peak) else None,
        "activation": (peak_last - before_last) * 1024 if reset_last else None,
        "state": persistent_state_bytes(model, opt),
    }
    queue.put((variant, result))


def _result_of(proc: mp.Process, queue: mp.Queue) -> tuple[str, dict]:
    """The child's result; ``RuntimeError`` (instead of a hang) when it died without one."""
    while True:
        try:
            item = queue.get(timeout=1.0)
            proc.join()
            return item
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"memory-measuring process exited with code {proc.exitcode}") from None


def _fmt_mib(value: int | None) -> str:
    return "      n/a" if value is None else f"{value / 2**20:9.1f}"


def _ratio(value: int | None, reference: int | None) -> str:
    return f"{value / reference:.3f}" if value is not None and reference else "n/a"


def training_benchmark(args: argparse.Namespace, lorun: nn.Module, blocks: list[nn.Module]) -> None:
    medians = interleaved(_train_step_fns(args, lorun, blocks), args.reps, args.warmup)
    print(f"\nTraining step (K={args.stages} forward + backward + Adam), median of {args.reps}, interleaved")
    for name, t in medians.items():
        print(f"  {name:<22} {t * 1e3:9.2f} ms   ratio to Block-{args.stages}: {t / medians['block']:.3f}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    results = {}
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)  # read by the children's glibc
    try:
        for variant in ("lorun", "block"):
            proc = ctx.Process(target=_memory_child, args=(args, variant, queue))
            proc.start()
            name, result = _result_of(proc, queue)
            results[name] = result
    finally:
        if previous is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
    block = results["block"]
    k = args.stages
    print(
        f"Training memory over {args.mem_steps} steps, each variant in a fresh process, from a common "
        "baseline (RSS after imports, warm-up and data, before the model is built)"
    )
    print(
        f"  {'':<22} {'whole (MiB)':>11} {'ratio':>6}   {'state (MiB)':>11} {'ratio':>6}   "
        f"{'activ. (MiB)':>12} {'ratio':>6}"
    )
    for name, r in results.items():
        state = sum(r["state"].values())
        print(
            f"  {name:<22} {_fmt_mib(r['whole']):>11} {_ratio(r['whole'], block['whole']):>6}   "
            f"{_fmt_mib(state):>11} {_ratio(state, sum(block['state'].values())):>6}   "
            f"{_fmt_mib(r['activation']):>12} {_ratio(r['activation'], block['activation']):>6}"
        )
    print(
        f"  whole  = peak RSS from the baseline through step {args.mem_steps} minus the baseline: the "
        "whole training footprint\n"
        "           (parameters, gradients, Adam moments, activations, allocator overhead)\n"
        "  state  = exact bytes of parameters + gradients + Adam moments after the last step "
        "(from the tensors)\n"
        f"  activ. = activation peak of step {args.mem_steps}: peak RSS during it minus RSS just before "
        "it (excludes everything allocated earlier)\n"
        f"  ratios are to Block-{k}"
    )
    for name, r in results.items():
        parts = ", ".join(f"{key} {value / 2**20:.2f}" for key, value in r["state"].items())
        print(f"  state of {name}: {parts} MiB")


def params_table(stages: int, gamma: float) -> None:
    """Markdown table: stored parameters of LoRun-K (both layouts) vs Block-K for the default denoisers."""
    if UNetDenoiser is None:
        raise SystemExit("lorun_peft.denoisers is not available")
    print(
        f"| denoiser | base | LoRun-{stages} paper | LoRun-{stages} peft | Block-{stages} "
        "| ratio paper | ratio peft |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, factory in (
        ("U-Net", lambda: UNetDenoiser(UNetConfig())),
        ("Transformer", lambda: TransformerDenoiser(TransformerConfig())),
    ):
        totals = {}
        for layout in ("paper", "peft"):
            torch.manual_seed(0)
            model = factory()
            add_stage_adapters(
                model, "t", StageLoRAConfig(num_stages=stages, gamma=gamma, conv_layout=layout)
            )
            report = parameter_report(model)
            base, totals[layout] = report.base.stored, report.base.stored + report.adapters.stored
        block = stages * base
        print(
            f"| {name} (default config) | {base:,} | {totals['paper']:,} | {totals['peft']:,} | {block:,} | "
            f"{totals['paper'] / block:.3f} | {totals['peft'] / block:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=9, help="K, number of unfolding stages")
    parser.add_argument("--gamma", type=float, default=10.0, help="rank factor of eq. 12 (percent)")
    parser.add_argument("--layout", choices=("paper", "peft"), default="paper", help="conv LoRA layout")
    parser.add_argument("--channels", type=int, default=1, help="image channels")
    parser.add_argument("--width", type=int, default=16, help="U-Net base channels")
    parser.add_argument("--depth", type=int, default=3, help="U-Net levels (lorun_peft U-Net only)")
    parser.add_argument("--size", type=int, default=64, help="image height = width")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--stand-in", action="store_true", help="use the local stand-in U-Net")
    parser.add_argument("--skip-training", action="store_true", help="only the forward benchmark")
    parser.add_argument(
        "--mem-steps", type=int, default=3, help="training steps in each memory-measuring process (>= 2)"
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        help="glibc MALLOC_MMAP_THRESHOLD_ (bytes) of the memory-measuring processes",
    )
    parser.add_argument("--params-table", action="store_true", help="print the parameter table and exit")
    args = parser.parse_args()
    if args.mem_steps < 2:
        parser.error("--mem-steps must be >= 2 (the last step's activation peak needs Adam state in place)")
    torch.set_num_threads(args.threads)
    if args.params_table:
        params_table(args.stages, args.gamma)
        return
    lorun, blocks = build_variants(args)
    print(
        f"denoiser: {type(blocks[0]).__name__}, layout={args.layout}, gamma={args.gamma}, "
        f"threads={args.threads}"
    )
    report = parameter_report(lorun)
    block_params = args.stages * report.base.stored
    print(
        f"stored parameters: LoRun-{args.stages} {report.base.stored + report.adapters.stored:,} "
        f"(base {report.base.stored:,} + adapters {report.adapters.stored:,}) vs Block-{args.stages} "
        f"{block_params:,}: ratio {(report.base.stored + report.adapters.stored) / block_params:.3f}"
    )
    forward_benchmark(args, lorun, blocks)
    if not args.skip_training:
        training_benchmark(args, lorun, blocks)


if __name__ == "__main__":
    main()

"""Benchmark LoRun-K (one frozen denoiser + K stage adapters) against Block-K (K plain denoisers) on CPU.

Measures, side by side in one run with interleaved repetitions and medians:

* forward time of a K-stage loop (``x = denoiser_k(x)`` for k < K) for LoRun with the three merge
  modes (in-forward, materialised, unmerged) and for Block-K; printed as ratios to Block-K (target:
  in-forward merge within 1.05x);
* time of one training step (K-stage forward, backward, Adam step) for LoRun-K and Block-K;
* peak memory of one training step, each variant in a fresh subprocess: the process's peak resident
  set size (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step) minus its resident
  size before the step. On CPU every tensor (activations, gradients, Adam state) lives in process
  memory and large blocks are returned to the OS when freed, so this measures real tensor memory plus
  allocator overhead (Linux only).

``--params-table`` prints the parameter table of docs/stage_lora.md instead (default U-Net and
Transformer, gamma 10, both conv layouts). Uses lorun_peft.denoisers' U-Net when available, else a
small local stand-in. Example (small): ``python benchmarks/bench_stage_lora.py --size 64 --reps 5``.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
import time

import torch
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


def build_variants(args: argparse.Namespace) -> tuple[nn.Module, list[nn.Module]]:
    """(LoRun model with K adapters, non-zero dW; Block-K list of plain copies)."""
    clean = build_denoiser(args)
    lorun = copy.deepcopy(clean)
    add_stage_adapters(
        lorun, "bench", StageLoRAConfig(num_stages=args.stages, gamma=args.gamma, conv_layout=args.layout)
    )
    with torch.no_grad():
        for name, p in lorun.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
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


def _train_step_fns(args: argparse.Namespace, lorun: nn.Module, blocks: list[nn.Module]):
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    target = torch.randn_like(x)
    set_merge_mode(lorun, "in_forward")
    lorun.train()
    for block in blocks:
        block.train()
    opt_lorun = torch.optim.Adam([p for p in lorun.parameters() if p.requires_grad], lr=1e-4)
    opt_block = torch.optim.Adam([p for b in blocks for p in b.parameters()], lr=1e-4)

    def lorun_step():
        loss = (lorun_loop(lorun, x, args.stages) - target).pow(2).mean()
        opt_lorun.zero_grad(set_to_none=True)
        loss.backward()
        opt_lorun.step()

    def block_step():
        loss = (block_loop(blocks, x) - target).pow(2).mean()
        opt_block.zero_grad(set_to_none=True)
        loss.backward()
        opt_block.step()

    return {"lorun": lorun_step, "block": block_step}


def _status_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(args: argparse.Namespace, variant: str, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    lorun, blocks = build_variants(args)
    step = _train_step_fns(args, lorun, blocks)[variant]
    before = _status_kb("VmRSS")
    try:  # reset the peak-RSS counter (Linux >= 4.0), so earlier peaks (imports, model building) don't count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset, earlier_peak = False, _status_kb("VmHWM")
    step()
    peak = _status_kb("VmHWM")
    valid = reset or peak > earlier_peak
    queue.put((variant, (peak - before) * 1024 if valid else 0))


def training_benchmark(args: argparse.Namespace, lorun: nn.Module, blocks: list[nn.Module]) -> None:
    medians = interleaved(_train_step_fns(args, lorun, blocks), args.reps, args.warmup)
    print(f"\nTraining step (K={args.stages} forward + backward + Adam), median of {args.reps}, interleaved")
    for name, t in medians.items():
        print(f"  {name:<22} {t * 1e3:9.2f} ms   ratio to Block-{args.stages}: {t / medians['block']:.3f}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    peaks = {}
    for variant in ("lorun", "block"):
        proc = ctx.Process(target=_memory_child, args=(args, variant, queue))
        proc.start()
        name, peak = queue.get()
        proc.join()
        peaks[name] = peak
    print("Peak memory of one training step (fresh process each; peak RSS during the step minus RSS before)")
    for name, peak in peaks.items():
        ratio = f"{peak / peaks['block']:.3f}" if peaks["block"] else "n/a"
        print(f"  {name:<22} {peak / 2**20:9.1f} MiB   ratio to Block-{args.stages}: {ratio}")
    if not all(peaks.values()):
        print("  (0 = the step stayed below the process's earlier peak; use a larger --size or --batch)")


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
    parser.add_argument("--params-table", action="store_true", help="print the parameter table and exit")
    args = parser.parse_args()
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

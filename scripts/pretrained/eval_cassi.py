"""Scores of the CASSI model against the classical baseline, on the test cube and on the training cube.

Rows: the initial estimate that starts the stages (``shift back y / C * 2``), GAP-TV (the classical
baseline, ``tasks.cassi_gap_tv.gap_tv``, its default settings), Block-9-share (the phase-1 backbone
alone) and LoRun-9 (set ``mask-28``), all on the same noiseless measurements through the 256x256 TSA
simulation mask. Cubes: ``cloth`` (256x256, never used for training: the test scene) and the four
256x256 quarters of ``stuffed_toys`` (the training cube: how well the model fits what it saw). CASSI
protocol (TSA/MST): per-band PSNR / SSIM averaged over the 28 bands.

    python scripts/pretrained/eval_cassi.py ../shared/data [--pretrained-dir DIR] [--json FILE]

``--gap-tv-only --gap-tv-iterations 9 --gap-tv-decay 0.7``: only the classical rows, GAP-TV with its
accelerated update and plain GAP with TV, cut to the unfolding's stage count (docs/pretrained.md).
``--gap-tv-only --gap-tv-rank 6``: adds GAP-TV kept in the span of the training cube's first 6 principal
spectra (``gap_tv(..., spectral_basis=...)``, docs/tasks_cassi.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lorun_peft.data.spectral import principal_spectra
from lorun_peft.pretrained import load_pretrained
from lorun_peft.tasks import get_task
from lorun_peft.tasks.cassi_gap_tv import gap_tv


def _items(data: Path) -> list[tuple[str, torch.Tensor]]:
    spec = get_task("cassi")
    cubes = data / "CASSI" / "cubes"
    ((_, cloth),) = spec.load_test_items(cubes / "cloth.npz")
    ((_, toys),) = spec.load_test_items(cubes / "stuffed_toys.npz")
    quarters = [
        (
            f"stuffed_toys[{top}:{top + 256}, {left}:{left + 256}] (training)",
            toys[:, top : top + 256, left : left + 256],
        )
        for top in (0, 256)
        for left in (0, 256)
    ]
    return [("cloth (test)", cloth), *quarters]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="the data root holding CASSI/cubes/{cloth,stuffed_toys}.npz")
    parser.add_argument("--pretrained-dir", default=None, help="asset root (default: the package's)")
    parser.add_argument("--json", default=None, help="write the table here too")
    parser.add_argument("--gap-tv-iterations", type=int, default=80, help="GAP-TV iterations (default 80)")
    parser.add_argument("--gap-tv-decay", type=float, default=0.95, help="TV weight decay per iteration")
    parser.add_argument(
        "--gap-tv-only", action="store_true", help="only the classical rows, plain GAP + TV beside GAP-TV"
    )
    parser.add_argument(
        "--gap-tv-rank",
        type=int,
        default=0,
        help="with --gap-tv-only: also GAP-TV kept in the span of the first R principal spectra of the "
        "training cube (stuffed_toys, the whole 512x512), TV on their coefficients (0: off)",
    )
    args = parser.parse_args()
    if args.gap_tv_rank and not args.gap_tv_only:
        parser.error("--gap-tv-rank goes with --gap-tv-only")
    torch.set_num_threads(1)
    spec = get_task("cassi")
    model = load_pretrained("cassi", "mask-28", args.pretrained_dir)
    k = model.num_stages
    tv = {"iterations": args.gap_tv_iterations, "decay": args.gap_tv_decay}
    basis = None
    if args.gap_tv_rank:
        ((_, toys),) = spec.load_test_items(Path(args.data_dir) / "CASSI" / "cubes" / "stuffed_toys.npz")
        basis = principal_spectra([toys], args.gap_tv_rank)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, cube in _items(Path(args.data_dir)):
        clean = cube.unsqueeze(0)
        started = time.perf_counter()
        shape = tuple(cube.shape)
        if args.gap_tv_only:
            with torch.no_grad(), spec.evaluation_physics(model, shape) as physics:
                y = physics.A(clean)
                estimates = {
                    "initial estimate": physics.init(y),
                    f"GAP-TV, {args.gap_tv_iterations} its": gap_tv(physics, y, **tv),
                    f"plain GAP + TV, {args.gap_tv_iterations} its": gap_tv(
                        physics, y, **tv, accelerate=False
                    ),
                }
                if basis is not None:
                    label = f"GAP-TV, {args.gap_tv_iterations} its, rank {args.gap_tv_rank}"
                    estimates[label] = gap_tv(physics, y, **tv, spectral_basis=basis)
                scores = {label: spec.score(est, clean, physics) for label, est in estimates.items()}
        else:
            with torch.no_grad(), spec.evaluation_physics(model, shape) as physics:
                y = physics.A(clean)
                estimates = {
                    "initial estimate": physics.init(y),
                    "GAP-TV (classical)": gap_tv(physics, y, **tv),
                    f"LoRun-{k} (mask-28)": model.restore(y),
                }
                mask = physics.mask.clone()  # the simulation mask; the backbone's own is a training crop
            with (
                torch.no_grad(),
                model.disable_adapters(),
                spec.evaluation_physics(model, shape, mask=mask) as physics,
            ):
                estimates[f"Block-{k}-share (backbone)"] = model.restore(y)
                scores = {label: spec.score(est, clean, physics) for label, est in estimates.items()}
        table[name] = {label: {"psnr": psnr, "ssim": ssim} for label, (psnr, ssim) in scores.items()}
        print(f"{name} ({time.perf_counter() - started:.0f} s)")
        for label, (psnr, ssim) in scores.items():
            print(f"  {label:<28} {psnr:6.2f} dB  {ssim:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Test PSNR against training step and training time for comparison runs: one figure, two panels.

Each series is ``LABEL=RUN_DIR`` or, for LoRun, ``LABEL=PHASE1_DIR,PHASE2_DIR``: the phase-2 curve is
drawn after phase 1 (steps and time offset by phase 1's). Points are the ``eval`` records of each run's
``log.jsonl`` (``--eval_data``/``--eval_every``); the time of step ``s`` is ``s / steps * train_time_s``
of its ``run_summary.json`` (uniform steps). Also writes the points as JSON beside the figure.

    python benchmarks/plot_convergence.py --title "CS 25 %, Set11" --out docs/figures/convergence_cs.png \
        "Block-9=runs/cmp/block" "Block-9-share=runs/cmp/block_share" \
        "LoRun-9=runs/cmp/lorun_phase1,runs/cmp/lorun"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lorun_peft.evaluation.report import write_atomic  # noqa: E402


def _curve(folder: Path, step0: int, time0: float) -> tuple[list[tuple[int, float, float]], int, float]:
    summary = json.loads((folder / "run_summary.json").read_text())
    steps, seconds = int(summary["steps"]), float(summary["train_time_s"])
    points = []
    for line in (folder / "log.jsonl").read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "eval" in record:
            step = int(record["step"])
            points.append((step0 + step, time0 + step / steps * seconds, float(record["eval"]["psnr"])))
    return points, step0 + steps, time0 + seconds


def series(spec: str) -> tuple[str, list[tuple[int, float, float]]]:
    """``LABEL=DIR[,DIR2]`` -> (label, [(step, seconds, psnr)])."""
    label, _, dirs = spec.partition("=")
    if not dirs:
        raise ValueError(f"series must be LABEL=RUN_DIR[,PHASE2_DIR], got {spec!r}")
    points: list[tuple[int, float, float]] = []
    step, seconds = 0, 0.0
    for folder in dirs.split(","):
        part, step, seconds = _curve(Path(folder), step, seconds)
        points += part
    return label, points


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", nargs="+")
    parser.add_argument("--title", required=True)
    parser.add_argument("--out", required=True, help="PNG file; the points go to the same name .json")
    parser.add_argument("--time-unit", choices=["s", "min"], default="min")
    args = parser.parse_args(argv)
    data = dict(series(spec) for spec in args.series)
    scale = 60.0 if args.time_unit == "min" else 1.0
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, points in data.items():
        steps, seconds, psnr = zip(*points)
        by_step.plot(steps, psnr, marker=".", label=label)
        by_time.plot([s / scale for s in seconds], psnr, marker=".", label=label)
    by_step.set_xlabel("optimizer step")
    by_time.set_xlabel(f"training time ({args.time_unit})")
    by_step.set_ylabel("test PSNR (dB)")
    for axis in (by_step, by_time):
        axis.grid(alpha=0.3)
    by_step.legend()
    figure.suptitle(args.title)
    figure.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    write_atomic(out.with_suffix(".json"), json.dumps(data, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return data


if __name__ == "__main__":
    main()

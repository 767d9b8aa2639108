"""Block-K vs Block-K-share vs LoRun-K at an equal step budget on one task, through the example scripts.

Runs ``examples/train_<task>.py`` for Block-K (``--steps`` steps), Block-K-share (``--steps`` steps) and
LoRun-K (phase 1 shared for ``round(steps * phase1_fraction)`` steps, then phase 2 stage LoRA for the
rest), scores each with ``examples/evaluate.py`` on the task's test data, and writes
``<output-dir>/results.md`` (the table with PSNR/SSIM, parameters and wall time, plus every command)
and ``results.json``. Each command is a separate process; wall times include start-up and evaluation
is timed apart. Task settings (see ``TASK_ARGS``; add more with ``--train-args "..."``):

* cs: CS 25 %, learned Phi, U-Net width 16 depth 3, 64x64 Train400 crops, batch 8; test Set11.
* sr: x2 with K1, RGB U-Net width 16, 64x64 BSDS500_train200 crops, batch 4; test Set5 (Y, 2-px border).
* cassi: HQS, U-Net width 16, 28 KAIST bands, 64x64 crops of stuffed_toys (a new random crop of the TSA
  256x256 mask per batch), batch 4; test cloth (256x256, full mask). Then LoRun-K gets a second adapter
  set trained with crops of the REAL 660x660 TSA mask (``mask-real``, as many steps as phase 2) and
  restores the five real TSA scenes with it.

    OMP_NUM_THREADS=2 python benchmarks/run_task_comparisons.py --task sr --steps 1200 \
        --output-dir runs/cmp_sr
    # variants in parallel processes, collected into one table as each finishes:
    OMP_NUM_THREADS=1 python benchmarks/run_task_comparisons.py --task cassi --steps 3600 \
        --output-dir runs/cmp_cassi --only lorun
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TASK_ARGS = {
    "cs": ["--ratio", "0.25", "--width", "16", "--depth", "3", "--patch_size", "64", "--batch_size", "8"],
    "sr": [
        "--kernel", "K1", "--scale", "2", "--denoiser", "unet", "--width", "16", "--depth", "3",
        "--patch_size", "64", "--batch_size", "4",
    ],
    "cassi": [
        "--train_data", "{data}/CASSI/cubes/stuffed_toys.npz", "--width", "16", "--depth", "3",
        "--patch_size", "64", "--batch_size", "4",
    ],
}  # fmt: skip
TEST_ARGS = {
    "cs": ["--test_data", "{data}/Set11"],
    "sr": ["--test_data", "{data}/Set5"],
    "cassi": ["--test_data", "{data}/CASSI/cubes/cloth.npz", "--mask", "{data}/CASSI/simulation/mask.mat"],
}
SET_NAMES = {"cs": "ratio-25", "sr": "x2-k1", "cassi": "mask-28"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASK_ARGS), required=True)
    parser.add_argument("--steps", type=int, default=1200, help="budget per model (optimizer steps)")
    parser.add_argument("--phase1-fraction", default="2/3", help="LoRun phase-1 share of --steps")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=str((REPO / ".." / "shared" / "data").resolve()))
    parser.add_argument("--num-stages", type=int, default=9, help="K")
    parser.add_argument("--train-args", default="", help="extra arguments for every training run")
    parser.add_argument(
        "--launcher", default=sys.executable, help="e.g. 'accelerate launch --num_processes 1'"
    )
    parser.add_argument("--smoke", action="store_true", help="pass --smoke to every script (tests)")
    parser.add_argument("--no-real", action="store_true", help="CASSI: skip the real TSA reconstruction")
    parser.add_argument(
        "--only",
        default="block,block_share,lorun",
        help="comma-separated variants to run now (block, block_share, lorun); the table collects every "
        "variant already in --output-dir, so variants can run in parallel processes",
    )
    args = parser.parse_args(argv)
    fraction = Fraction(args.phase1_fraction)
    if args.steps < 2 or not 0 < fraction < 1:
        parser.error("--steps must be >= 2 and --phase1-fraction in (0, 1)")
    args.phase1_steps = max(1, min(args.steps - 1, round(args.steps * fraction)))
    args.only = [v for v in args.only.split(",") if v]
    unknown = sorted(set(args.only) - {"block", "block_share", "lorun"})
    if unknown:
        parser.error(f"unknown variants {unknown}; expected block, block_share, lorun")
    return args


def _run(command: list[str], log: Path) -> float:
    """Run ``command`` (output to ``log``); return its wall time; raise with the log tail on failure."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    elapsed = time.perf_counter() - start
    if code:
        tail = log.read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"command failed ({code}): {shlex.join(command)}\n" + "\n".join(tail))
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    launcher = shlex.split(args.launcher)
    task, k = args.task, args.num_stages
    fill = {"data": args.data_dir}
    common = [a.format(**fill) for a in TASK_ARGS[task]] + [
        "--num_stages",
        str(k),
        "--show_progress",
        "False",
    ]
    common += shlex.split(args.train_args) + (["--smoke"] if args.smoke else [])
    test = [a.format(**fill) for a in TEST_ARGS[task]] if not args.smoke else ["--smoke"]
    script = str(REPO / "examples" / f"train_{task}.py")
    evaluate = [sys.executable, str(REPO / "examples" / "evaluate.py")]
    phase2 = args.steps - args.phase1_steps
    runs = {
        "block": [["--mode", "block", "--max_steps", str(args.steps)]],
        "block_share": [["--mode", "shared", "--max_steps", str(args.steps)]],
        "lorun": [
            ["--mode", "shared", "--max_steps", str(args.phase1_steps)],
            ["--mode", "lorun", "--backbone", str(out / "lorun_phase1"), "--max_steps", str(phase2)],
        ],
    }
    for variant in [v for v in runs if v in args.only]:
        phases = runs[variant]
        commands = []
        train_time = 0.0
        for index, extra in enumerate(phases):
            folder = out / ("lorun_phase1" if variant == "lorun" and index == 0 else variant)
            command = [*launcher, script, *common, *extra, "--output_dir", str(folder)]
            commands.append(shlex.join(command))
            print(
                f"== {variant} ({'phase ' + str(index + 1) if variant == 'lorun' else 'train'})", flush=True
            )
            train_time += _run(command, out / f"{folder.name}.log")
        summary = json.loads((out / variant / "run_summary.json").read_text())
        backbone = out / ("lorun_phase1" if variant == "lorun" else variant)
        eval_command = [
            *evaluate,
            "--backbone",
            str(backbone),
            *test,
            "--output_dir",
            str(out / f"eval_{variant}"),
        ]
        if variant == "lorun":
            eval_command += ["--adapter_set", str(out / "lorun"), "--adapter_set_name", SET_NAMES[task]]
        commands.append(shlex.join(eval_command))
        eval_time = _run(eval_command, out / f"eval_{variant}.log")
        report = json.loads((out / f"eval_{variant}" / "metrics.json").read_text())
        row = {
            "steps": args.steps,
            "stored_params": summary["stored_params"],
            "trainable_params": summary["trainable_params"],
            "psnr": report["mean_psnr"],
            "ssim": report["mean_ssim"],
            "train_wall_s": train_time,
            "eval_wall_s": eval_time,
            "final_loss": summary["final_loss"],
        }
        print(
            f"   PSNR {report['mean_psnr']:.2f} dB, SSIM {report['mean_ssim']:.4f}, {train_time:.0f} s",
            flush=True,
        )
        if variant == "lorun" and task == "cassi" and not args.no_real and not args.smoke:
            commands += _real_cassi(args, out, launcher, script, common, evaluate, phase2)
        row["commands"] = commands
        _write(out / f"row_{variant}.json", json.dumps(row, indent=2))
    return _collect(args, out, phase2)


def _real_cassi(args, out: Path, launcher, script, common, evaluate, steps: int) -> list[str]:
    """Phase 2 on the LoRun backbone with the REAL 660x660 TSA mask (set ``mask-real``), then restore
    the real measurements with it: a new mask is a new adapter set over the same shared denoiser."""
    real_mask = f"{args.data_dir}/CASSI/real_TSA/mask.mat"
    train_real = [
        *launcher, script, *common, "--mode", "lorun", "--backbone", str(out / "lorun_phase1"),
        "--mask", real_mask, "--adapter_set_name", "mask-real", "--max_steps", str(steps),
        "--output_dir", str(out / "lorun_real"),
    ]  # fmt: skip
    print("== lorun (phase 2 with the real TSA mask)", flush=True)
    _run(train_real, out / "lorun_real.log")
    restore = [
        *evaluate, "--backbone", str(out / "lorun_phase1"), "--adapter_set", str(out / "lorun_real"),
        "--adapter_set_name", "mask-real", "--real_cassi", f"{args.data_dir}/CASSI/real_TSA/measurements",
        "--real_mask", real_mask, "--output_dir", str(out / "real_TSA"),
    ]  # fmt: skip
    _run(restore, out / "real_TSA.log")
    return [shlex.join(train_real), shlex.join(restore)]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _collect(args: argparse.Namespace, out: Path, phase2: int) -> dict:
    """``results.md`` / ``results.json`` from every ``row_<variant>.json`` in ``out``."""
    k, task = args.num_stages, args.task
    rows = {
        v: json.loads((out / f"row_{v}.json").read_text())
        for v in ("block", "block_share", "lorun")
        if (out / f"row_{v}.json").is_file()
    }
    labels = {"block": f"Block-{k}", "block_share": f"Block-{k}-share", "lorun": f"LoRun-{k}"}
    lines = [
        f"# {task.upper()}: Block-{k} vs Block-{k}-share vs LoRun-{k}, {args.steps} steps each "
        f"(LoRun: {args.phase1_steps} shared + {phase2} LoRA)",
        "",
        "| model | steps | stored params | trainable params (last phase) | PSNR (dB) | SSIM "
        "| train wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {labels[v]} | {r['steps']} | {r['stored_params']:,} | {r['trainable_params']:,} "
        f"| {r['psnr']:.2f} | {r['ssim']:.4f} | {r['train_wall_s']:.0f} |"
        for v, r in rows.items()
    ]
    commands = [c for r in rows.values() for c in r["commands"]]
    lines += ["", "Commands (run from the repository root):", "", "```bash", *commands, "```", ""]
    text = "\n".join(lines)
    _write(out / "results.md", text)
    _write(out / "results.json", json.dumps({"rows": rows, "commands": commands}, indent=2))
    print(text)
    return rows


if __name__ == "__main__":
    main()

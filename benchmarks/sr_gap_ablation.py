"""Which phase-2 settings close LoRun-K's gap to Block-K in SR (x2, kernel K1, Set5)?

Every variant changes ONE setting of the reference LoRun-9 recipe (800 shared steps, then 400 stage-LoRA
steps with gamma 10, Adam 1e-3 cosine, B = 0 / Gaussian-A adapter init, seed 0) and is scored on Set5
(Y, 2-pixel border) with ``examples/evaluate.py``. Variants that only change phase 2 reuse one phase-1
backbone (``--backbone``, default: the shipped SR backbone, which is exactly that 800-step phase 1);
variants that change phase 1 (noise-level map, the phase-1/phase-2 split) train their own. Each variant's
result is written to ``<output-dir>/<variant>/result.json`` as soon as it finishes, so the variants can be
run in several processes (``--only a,b``) and collected with ``--report``.

    OMP_NUM_THREADS=1 python benchmarks/sr_gap_ablation.py --output-dir runs/sr_gap --only gamma25,lr3e-3
    python benchmarks/sr_gap_ablation.py --output-dir runs/sr_gap --report
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED_BACKBONE = REPO / "lorun_peft" / "assets" / "pretrained" / "sr" / "backbone"

#: Training arguments shared by every run (the SR comparison's settings, docs/results.md).
COMMON = [
    "--kernel", "K1", "--scale", "2", "--denoiser", "unet", "--width", "16", "--depth", "3",
    "--patch_size", "64", "--batch_size", "4", "--num_stages", "9", "--no_show_progress",
]  # fmt: skip

#: variant -> (description, phase 1, phase-2 arguments). Phase 1: None reuses --backbone, a list of
#: arguments trains one, a variant name reuses that variant's phase-1 backbone (run that variant first).
VARIANTS: dict[str, tuple[str, list[str] | str | None, list[str]]] = {
    "reference": ("reference: 800 + 400, gamma 10, lr 1e-3, seed 0", None, ["--max_steps", "400"]),
    "seed1": ("reference, phase-2 seed 1 (run-to-run spread)", None, ["--max_steps", "400", "--seed", "1"]),
    "gamma25": ("rank: gamma 25", None, ["--max_steps", "400", "--gamma", "25"]),
    "gamma50": ("rank: gamma 50", None, ["--max_steps", "400", "--gamma", "50"]),
    "lr3e-3": ("phase-2 learning rate 3e-3", None, ["--max_steps", "400", "--learning_rate", "3e-3"]),
    "lr1e-2": ("phase-2 learning rate 1e-2", None, ["--max_steps", "400", "--learning_rate", "1e-2"]),
    "init-kaiming": (
        "adapter init: Kaiming-uniform A (PEFT's default), B = 0",
        None,
        ["--max_steps", "400", "--adapter_init", "kaiming"],
    ),
    "steps-only": (
        "phase 2 trains the set's step sizes only (adapters frozen at 0)",
        None,
        ["--max_steps", "400", "--train_adapters", "False"],
    ),
    "phase2-800": ("phase-2 length 800 (budget 1600)", None, ["--max_steps", "800"]),
    "split600": (
        "split 600 shared + 600 LoRA (same 1200 budget)",
        ["--max_steps", "600"],
        ["--max_steps", "600"],
    ),
    "split600-lr3e-3": (
        "split 600 + 600 and phase-2 lr 3e-3 (the two that helped), phase 1 shared with split600",
        "split600",
        ["--max_steps", "600", "--learning_rate", "3e-3"],
    ),
    "split600-lr3e-3-all": (
        "split 600 + 600 with lr 3e-3 in both phases (compare with Block-9 at lr 3e-3)",
        ["--max_steps", "600", "--learning_rate", "3e-3"],
        ["--max_steps", "600", "--learning_rate", "3e-3"],
    ),
    "noise-map": (
        "noise-level map: denoiser conditioned on sigma_k (phase 1 retrained)",
        ["--max_steps", "800", "--noise_level_map", "True"],
        ["--max_steps", "400"],
    ),
}  # fmt: skip


#: Block-K reruns (``--mode block``), for the spread of the target itself.
BLOCK_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "block-lr3e-3": (
        "Block-9, 1200 steps, lr 3e-3 (does the target move too?)",
        ["--max_steps", "1200", "--learning_rate", "3e-3"],
    ),  # noqa: E501
    "block-seed1": (
        "Block-9, 1200 steps, seed 1 (spread of the target)",
        ["--max_steps", "1200", "--seed", "1"],
    ),
}


def _run(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-15:])
        raise RuntimeError(f"command failed ({code}): {shlex.join(command)}\n{tail}")
    return time.perf_counter() - start


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def run_variant(name: str, args: argparse.Namespace, extra: list[str]) -> dict:
    """Train (phase 1 if the variant needs it, then phase 2), evaluate on Set5, write result.json."""
    folder = Path(args.output_dir).resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    data = ["--data_dir", args.data_dir]
    script = [sys.executable, str(REPO / "examples" / "train_sr.py")]
    if name in BLOCK_VARIANTS:
        return _run_block(name, args, extra, folder, data, script)
    description, phase1, phase2 = VARIANTS[name]
    commands, times = [], {}
    backbone = Path(args.backbone).resolve()
    if isinstance(phase1, str):
        backbone = folder.parent / phase1 / "phase1"
        if not (backbone / "config.json").is_file():
            raise SystemExit(f"{name} reuses the phase-1 backbone of {phase1}: run --only {phase1} first")
    elif phase1 is not None:
        backbone = folder / "phase1"
        command = [*script, *data, *COMMON, *extra, "--mode", "shared", *phase1]
        command += ["--output_dir", str(backbone)]
        commands.append(shlex.join(command))
        times["phase1_s"] = _run(command, folder / "phase1.log")
    command = [
        *script, *data, *COMMON, *extra, "--mode", "lorun", "--backbone", str(backbone),
        "--adapter_set_name", "x2-k1", *phase2, "--output_dir", str(folder / "phase2"),
    ]  # fmt: skip
    commands.append(shlex.join(command))
    times["phase2_s"] = _run(command, folder / "phase2.log")
    evaluate = _evaluate(
        args, folder, backbone, ["--adapter_set", str(folder / "phase2"), "--adapter_set_name", "x2-k1"]
    )
    commands.append(shlex.join(evaluate))
    report = json.loads((folder / "eval" / "metrics.json").read_text())
    summary = json.loads((folder / "phase2" / "run_summary.json").read_text())
    stage0 = json.loads((folder / "phase2" / "x2-k1" / "stage_00" / "adapter_config.json").read_text())
    result = {
        "variant": name,
        "description": description,
        "psnr": report["mean_psnr"],
        "ssim": report["mean_ssim"],
        "adapter_init": stage0["init_lora_weights"],
        "phase2_trainable_params": summary["trainable_params"],
        "stored_params": summary["stored_params"],
        **times,
        "commands": commands,
    }
    _write_json(folder / "result.json", result)
    print(f"{name}: {result['psnr']:.2f} dB / {result['ssim']:.4f}", flush=True)
    return result


def _evaluate(args: argparse.Namespace, folder: Path, backbone: Path, adapters: list[str]) -> list[str]:
    command = [
        sys.executable, str(REPO / "examples" / "evaluate.py"), "--backbone", str(backbone), *adapters,
        "--test_data", f"{args.data_dir}/Set5", "--output_dir", str(folder / "eval"),
    ]  # fmt: skip
    _run(command, folder / "eval.log")
    return command


def _run_block(name, args, extra, folder: Path, data: list[str], script: list[str]) -> dict:
    description, train_args = BLOCK_VARIANTS[name]
    command = [*script, *data, *COMMON, *extra, "--mode", "block", *train_args]
    command += ["--output_dir", str(folder / "block")]
    seconds = _run(command, folder / "block.log")
    evaluate = _evaluate(args, folder, folder / "block", [])
    report = json.loads((folder / "eval" / "metrics.json").read_text())
    summary = json.loads((folder / "block" / "run_summary.json").read_text())
    result = {
        "variant": name,
        "description": description,
        "psnr": report["mean_psnr"],
        "ssim": report["mean_ssim"],
        "phase2_trainable_params": summary["trainable_params"],
        "stored_params": summary["stored_params"],
        "train_s": seconds,
        "commands": [shlex.join(command), shlex.join(evaluate)],
    }
    _write_json(folder / "result.json", result)
    print(f"{name}: {result['psnr']:.2f} dB / {result['ssim']:.4f}", flush=True)
    return result


def report(output_dir: Path, reference_rows: dict[str, float]) -> str:
    """Collect every ``result.json`` into ``results.md`` (differences to the reference variant)."""
    rows = {}
    for name in [*VARIANTS, *BLOCK_VARIANTS]:
        path = output_dir / name / "result.json"
        if path.exists():
            rows[name] = json.loads(path.read_text())
    if not rows:
        raise SystemExit(f"no result.json under {output_dir}")
    base = rows.get("reference", {}).get("psnr")
    lines = [
        "| variant | what changes | Set5 PSNR (dB) | vs reference (dB) | SSIM | trainable in phase 2 |",
        "|---|---|---|---|---|---|",
    ]
    for label, psnr in reference_rows.items():
        lines.append(
            f"| {label} | (comparison run, docs/results.md) | {psnr:.2f} | {psnr - base:+.2f} | | |"
            if base is not None
            else f"| {label} | | {psnr:.2f} | | | |"
        )
    for name, row in rows.items():
        delta = "" if base is None else f"{row['psnr'] - base:+.2f}"
        lines.append(
            f"| {name} | {row['description']} | {row['psnr']:.2f} | {delta} | {row['ssim']:.4f} "
            f"| {row['phase2_trainable_params']:,} |"
        )
    lines += ["", "Commands:", "", "```bash"]
    for row in rows.values():
        lines += row["commands"]
    lines += ["```", ""]
    text = "\n".join(lines)
    tmp = output_dir / ".results.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output_dir / "results.md")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=str((REPO / ".." / "shared" / "data").resolve()))
    parser.add_argument("--backbone", default=str(SHIPPED_BACKBONE), help="phase-1 backbone to reuse")
    parser.add_argument("--only", default="", help="comma-separated variants (default: all)")
    parser.add_argument("--train-args", default="", help="extra arguments for every training run")
    parser.add_argument("--report", action="store_true", help="only collect results.md")
    parser.add_argument(
        "--block-psnr", type=float, default=None, help="Block-9 PSNR of the comparison, added to the table"
    )
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    references = {"Block-9 (1200 steps)": args.block_psnr} if args.block_psnr is not None else {}
    if args.report:
        print(report(output_dir, references))
        return
    names = [n for n in args.only.split(",") if n] or [*VARIANTS, *BLOCK_VARIANTS]
    unknown = sorted(set(names) - set(VARIANTS) - set(BLOCK_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted([*VARIANTS, *BLOCK_VARIANTS])}")
    for name in names:
        run_variant(name, args, shlex.split(args.train_args))
    print(report(output_dir, references))


if __name__ == "__main__":
    main()

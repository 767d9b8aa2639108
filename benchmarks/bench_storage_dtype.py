"""PSNR of shipped models stored in float32 vs float16 / bfloat16: is half-precision storage lossless?

Loads ``<root>/<task>`` (a shipped asset tree in float32), writes it again with
``save_pretrained_assets(..., storage_dtype=...)``, loads both (loading casts back to float32) and scores
every adapter set on the test data with ``lorun evaluate``'s protocol. Writes a JSON with the per-set
PSNR of both and the largest change;
docs/pretrained.md quotes it (the issue's bar: 0.01 dB).

    python benchmarks/bench_storage_dtype.py cs --root runs/assets_fp32 --test-data ../shared/data/Set11 \
        --dtype float16 --out runs/storage_cs.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lorun_peft.evaluation import evaluate_items, load_test_items
from lorun_peft.evaluation.report import write_atomic
from lorun_peft.physics import load_cassi_mask
from lorun_peft.pretrained import list_pretrained, load_pretrained, save_pretrained_assets


def _scores(task: str, root: Path, items, mask) -> dict[str, float]:
    scores = {}
    for name in list_pretrained(root)[task]:
        model = load_pretrained(task, name, root)
        scores[name] = evaluate_items(model, task, items, mask=mask).mean_psnr
    return scores


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["cs", "sr", "cassi"])
    parser.add_argument("--root", required=True, help="asset root holding <task>/ in float32")
    parser.add_argument("--test-data", required=True)
    parser.add_argument("--mask", default=None, help="CASSI: the full mask to evaluate with")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    items = load_test_items(args.task, args.test_data)
    mask = load_cassi_mask(args.mask) if args.mask else None
    reference = _scores(args.task, Path(args.root), items, mask)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_pretrained(args.task, None, args.root)  # the backbone with every set resident
        save_pretrained_assets(model, args.task, tmp, storage_dtype=getattr(torch, args.dtype))
        copy = Path(tmp) / args.task
        size32 = sum(p.stat().st_size for p in (Path(args.root) / args.task).rglob("*.safetensors"))
        size16 = sum(p.stat().st_size for p in copy.rglob("*.safetensors"))
        half = _scores(args.task, Path(tmp), items, mask)
    result = {
        "task": args.task,
        "dtype": args.dtype,
        "test_data": args.test_data,
        "bytes_float32": size32,
        f"bytes_{args.dtype}": size16,
        "psnr_float32": reference,
        f"psnr_{args.dtype}": half,
        "max_abs_change_db": max(abs(half[k] - reference[k]) for k in reference),
    }
    write_atomic(Path(args.out), json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

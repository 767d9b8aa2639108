"""Set11 scores of the inpainting model against the classical baseline, at each shipped missing rate.

Rows per missing rate: the seen pixels alone (``A^T y``), the fill that starts the stages (``init``),
harmonic (Laplace) inpainting (the classical baseline, ``tasks.inpainting.harmonic_inpainting``),
Block-9-share (the phase-1 backbone alone, its operator at this rate) and LoRun-9 (the rate's adapter
set). Every method sees the same masks: ``lorun evaluate``'s, seeded by ``(seed, index)``. Gray PSNR /
SSIM with the CS protocol's metrics.

    python scripts/pretrained/eval_inpainting.py ../shared/data/Set11 [--pretrained-dir DIR] \
        [--json docs/logs/inpainting_eval_set11.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lorun_peft.pretrained import load_pretrained
from lorun_peft.tasks import get_task
from lorun_peft.tasks.inpainting import harmonic_inpainting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="test images (Set11)")
    parser.add_argument("--pretrained-dir", default=None, help="asset root (default: the package's)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed (lorun evaluate's default: 0)")
    parser.add_argument("--json", default=None, help="write the table here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = get_task("inpainting")
    model = load_pretrained("inpainting", None, args.pretrained_dir)
    items = spec.load_test_items(args.folder)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for set_name in model.list_adapter_sets():
        missing = float(model.adapter_tasks[set_name].physics.operator.missing)
        rows: dict[str, list[tuple[float, float]]] = {}
        model.set_adapter_set(set_name)
        started = time.perf_counter()
        for index, (_, image) in enumerate(items):
            clean = image.unsqueeze(0)
            shape = tuple(image.shape)
            with spec.evaluation_physics(model, shape, index=index, seed=args.seed) as physics:
                mask = physics.operator.mask.clone()
                y = physics.measure(clean)
                estimates = {
                    "seen pixels (A^T y)": physics.A_adjoint(y),
                    "fill (init)": physics.init(y),
                    "harmonic (classical)": harmonic_inpainting(y, mask),
                    f"LoRun-{model.num_stages}": model.restore(y),
                }
            with model.disable_adapters(), spec.evaluation_physics(model, shape, mask=mask):
                estimates[f"Block-{model.num_stages}-share"] = model.restore(y)  # the same mask
            for label, estimate in estimates.items():
                rows.setdefault(label, []).append(spec.score(estimate, clean, physics))
        table[set_name] = {
            label: {
                "psnr": sum(p for p, _ in scores) / len(scores),
                "ssim": sum(s for _, s in scores) / len(scores),
            }
            for label, scores in rows.items()
        }
        seconds = time.perf_counter() - started
        print(f"{set_name} ({missing:.0%} missing, {len(items)} images, {seconds:.0f} s)")
        for label, score in table[set_name].items():
            print(f"  {label:<24} {score['psnr']:6.2f} dB  {score['ssim']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()

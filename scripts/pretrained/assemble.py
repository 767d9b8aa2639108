"""Assemble a shipped pretrained model: one phase-1 backbone plus adapter set folders.

Usage: assemble.py TASK BACKBONE_DIR SET_DIR [SET_DIR ...] [--manifest-extra JSON_FILE]
                   [--storage-dtype float16] [--kernels kernels_12.mat]

Loads the backbone strictly, loads each set (its fingerprint must match the backbone), and writes
``lorun_peft/assets/pretrained/<TASK>/`` atomically with a manifest recording where each part came
from (the training logs' run summaries and the commands are in docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lorun_peft.pretrained import KERNELS_FILE, save_pretrained_assets
from lorun_peft.tasks import task_names
from lorun_peft.unfolding import LoRunModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=task_names())
    parser.add_argument("backbone")
    parser.add_argument("sets", nargs="+", help="adapter set folders (each holds adapter_set.json)")
    parser.add_argument("--manifest-extra", help="JSON file merged into manifest.json")
    parser.add_argument(
        "--storage-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="precision of the stored weights (loading casts back to float32)",
    )
    parser.add_argument("--kernels", help="SR: kernels_12.mat to ship beside the model (all-kernel sets)")
    parser.add_argument(
        "--set-mask",
        action="append",
        default=[],
        metavar="SET=MASK.mat",
        help="CASSI: give a set trained on crops of a mask the whole mask (mask-real=real_TSA/mask.mat), "
        "so it restores measurements of that size without --mask",
    )
    args = parser.parse_args()
    model = LoRunModel.from_pretrained(args.backbone)
    sources = {}
    for folder in args.sets:
        folder = Path(folder)
        model.load_adapter(folder)
        sources[folder.name] = str(folder)
        summary = folder.parent / "run_summary.json"
        if summary.is_file():
            sources[folder.name + ":run_summary"] = json.loads(summary.read_text())
    for spec in args.set_mask:
        name, _, mask_file = spec.partition("=")
        from lorun_peft.physics import CASSI, load_cassi_mask

        model.set_adapter_set(name)
        old = model.active_task.physics
        model.active_task.physics = CASSI(load_cassi_mask(mask_file), step=old.step)
        sources[name + ":mask"] = f"whole mask {mask_file} (trained on {list(old.mask.shape)} crops of it)"
    manifest = {
        "task": args.task,
        "backbone_source": args.backbone,
        "sets": sources,
        "storage_dtype": args.storage_dtype,
    }
    extra = {}
    if args.kernels:
        from lorun_peft.physics import load_kernels_12

        extra[KERNELS_FILE] = {"kernels": load_kernels_12(args.kernels).float()}
        manifest["kernels"] = f"{KERNELS_FILE}: K1..K12 of {Path(args.kernels).name} (USRNet/KAIR, MIT)"
    if args.manifest_extra:
        manifest.update(json.loads(Path(args.manifest_extra).read_text()))
    target = save_pretrained_assets(
        model,
        args.task,
        manifest=manifest,
        storage_dtype=getattr(torch, args.storage_dtype),
        extra_tensors=extra,
    )
    print(f"wrote {target}: sets {model.list_adapter_sets()}")


if __name__ == "__main__":
    main()

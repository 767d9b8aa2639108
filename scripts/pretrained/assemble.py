"""Assemble a shipped pretrained model: one phase-1 backbone plus adapter set folders.

Usage: assemble.py TASK BACKBONE_DIR SET_DIR [SET_DIR ...] [--manifest-extra JSON_FILE]

Loads the backbone strictly, loads each set (its fingerprint must match the backbone), and writes
``lorun_peft/assets/pretrained/<TASK>/`` atomically with a manifest recording where each part came
from (the training logs' run summaries and the commands are in docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorun_peft.pretrained import save_pretrained_assets
from lorun_peft.unfolding import LoRunModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["cs", "sr", "cassi"])
    parser.add_argument("backbone")
    parser.add_argument("sets", nargs="+", help="adapter set folders (each holds adapter_set.json)")
    parser.add_argument("--manifest-extra", help="JSON file merged into manifest.json")
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
    manifest = {"task": args.task, "backbone_source": args.backbone, "sets": sources}
    if args.manifest_extra:
        manifest.update(json.loads(Path(args.manifest_extra).read_text()))
    target = save_pretrained_assets(model, args.task, manifest=manifest)
    print(f"wrote {target}: sets {model.list_adapter_sets()}")


if __name__ == "__main__":
    main()

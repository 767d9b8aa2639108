"""Score SR adapter sets on every kernel of kernels_12.mat: the scale x kernel table of docs/pretrained.md.

An all-kernel set (``x2``, trained with ``--kernel all``) is evaluated with each of the 12 kernels written
into its physics in turn; a single-kernel set (``x2-k1``) the same way, to show what it does off its
kernel. Set5, Y channel, border = scale (the KAIR/USRNet protocol of ``lorun evaluate``). Without sets,
the backbone itself is scored (a phase-1 all-kernel model).

    python scripts/pretrained/eval_sr_kernels.py BACKBONE SETS_DIR:x2 SETS_DIR:x3 ... \
        --test-data ../shared/data/Set5 --kernels ../shared/data/kernels/kernels_12.mat --out table.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorun_peft.evaluation import evaluate_items, load_test_items
from lorun_peft.evaluation.report import write_atomic
from lorun_peft.tasks import load_sr_kernels
from lorun_peft.unfolding import LoRunModel


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backbone")
    parser.add_argument(
        "sets", nargs="*", help="FOLDER:SET_NAME of each adapter set to score (none: the backbone itself)"
    )
    parser.add_argument("--test-data", required=True)
    parser.add_argument("--kernels", default=None, help="kernels_12.mat (default: <data_dir>/kernels/)")
    parser.add_argument("--noise-sigma", type=float, default=0.0, help="measurement noise std on [0, 1]")
    parser.add_argument("--out", required=True, help="JSON file for the table")
    args = parser.parse_args(argv)
    kernels, source = load_sr_kernels(args.kernels)
    items = load_test_items("sr", args.test_data)
    model = LoRunModel.from_pretrained(args.backbone).eval()
    table: dict = {
        "kernels": source,
        "test_data": args.test_data,
        "noise_sigma": args.noise_sigma,
        "sets": {},
    }
    for spec in args.sets or [None]:
        if spec is None:  # a phase-1 model (Block-K-share or Block-K) on its own
            name = "backbone"
        else:
            folder, _, name = spec.rpartition(":")
            model.load_adapter(folder, name)
            model.set_adapter_set(name)
        row = {}
        for index in range(kernels.shape[0]):
            report = evaluate_items(model, "sr", items, kernel=kernels[index], noise_sigma=args.noise_sigma)
            row[f"K{index + 1}"] = {"psnr": report.mean_psnr, "ssim": report.mean_ssim}
            print(f"{name} K{index + 1}: {report.mean_psnr:.2f} dB / {report.mean_ssim:.4f}", flush=True)
        table["sets"][name] = row
    write_atomic(Path(args.out), json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()

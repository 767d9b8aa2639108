"""Figures of the CASSI comparison (``benchmarks/run_task_comparisons.py --task cassi``) for the docs.

Reads the restored cubes (``eval_<variant>/images/*.npz``, ``real_TSA/*.npz``) of a comparison folder and
writes ``docs/figures/cassi_cloth_comparison.png`` (ground truth, initial estimate, Block-9,
Block-9-share, LoRun-9 in pseudo-colour with a zoom box, PSNR/SSIM from the saved reports) and
``docs/figures/cassi_real_tsa.png`` (the PNGs of the real TSA scenes restored by LoRun-9, which
``examples/evaluate.py --real_cassi`` stretches so their 99.5th percentile is white).

    python scripts/make_cassi_figures.py runs/cmp_cassi [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lorun_peft.data import KAIST_WAVELENGTHS_28, load_cube
from lorun_peft.figures import cassi_to_rgb, comparison_figure
from lorun_peft.physics import CASSI, load_cassi_mask

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "figures"
VARIANTS = {"block": "Block-9", "block_share": "Block-9-share", "lorun": "LoRun-9"}


def _cube(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path)["cube"]).permute(2, 0, 1).float()


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparison_dir")
    parser.add_argument("--data-dir", default=str((REPO / ".." / "shared" / "data").resolve()))
    args = parser.parse_args()
    folder, data = Path(args.comparison_dir), Path(args.data_dir)
    OUT.mkdir(parents=True, exist_ok=True)

    truth = load_cube(data / "CASSI" / "cubes" / "cloth.npz", wavelengths=KAIST_WAVELENGTHS_28)
    physics = CASSI(load_cassi_mask(data / "CASSI" / "simulation" / "mask.mat"))
    initial = physics.init(physics.A(truth.unsqueeze(0)))[0]
    images, titles, captions = [truth, initial], ["ground truth (cloth)", "initial estimate"], ["", ""]
    for variant, label in VARIANTS.items():
        report = json.loads((folder / f"eval_{variant}" / "metrics.json").read_text())
        images.append(_cube(folder / f"eval_{variant}" / "images" / "cloth.npz"))
        titles.append(label)
        captions.append(f"{report['mean_psnr']:.2f} dB / {report['mean_ssim']:.3f}")
    comparison_figure(
        [cassi_to_rgb(c).clamp(0, 1) for c in images],
        titles,
        OUT / "cassi_cloth_comparison.png",
        captions=captions,
        panel_width=200,
    )
    scenes = sorted((folder / "real_TSA").glob("*.png"))  # already stretched for display by evaluate.py
    if scenes:
        comparison_figure(
            [_png(p) for p in scenes],
            [p.stem for p in scenes],
            OUT / "cassi_real_tsa.png",
            zoom=None,
            panel_width=200,
        )
    print(f"wrote figures into {OUT}")


if __name__ == "__main__":
    main()

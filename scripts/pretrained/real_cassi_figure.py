"""The five real TSA scenes restored by the shipped CASSI model, side by side (cassi_real_tsa.png).

Reads the ``.npy`` cubes ``lorun restore <scene>.mat --task cassi --adapter-set mask-real`` wrote and shows
each in pseudo-colour divided by its 99.5th percentile (real scenes are dim; display only).

    python scripts/pretrained/real_cassi_figure.py runs/cassi_field/real/scene{1,2,3,4,5}.npy \
        --out docs/figures/cassi_real_tsa.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lorun_peft.figures import cassi_to_rgb, comparison_figure


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cubes", nargs="+", help=".npy cubes (C, H, W) written by lorun restore")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    images, titles = [], []
    for path in map(Path, args.cubes):
        cube = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        rgb = cassi_to_rgb(cube.clamp_min(0))
        images.append((rgb / torch.quantile(rgb.flatten(), 0.995).clamp_min(1e-6)).clamp(0, 1))
        titles.append(path.stem)
    return comparison_figure(images, titles, args.out, zoom=None, panel_width=220)


if __name__ == "__main__":
    print(f"wrote {main()}")

"""How fast a CASSI unfolding network fits, with and without ``identity_init`` (docs/denoisers.md).

HQS, K = 9, a 28-band U-Net of width 32 (3 levels), two fixed 64x64 patches of the CAVE cube
stuffed_toys (resampled to the 28 KAIST bands) measured through the top-left 64x64 crop of the TSA
simulation mask; Adam at ``--lr``, fp32, one thread, the same seed for both inits. Prints the per-band
PSNR of the fit (and of every stage) every 50 steps: an optimisation probe, not a generalisation test.

    OMP_NUM_THREADS=1 python benchmarks/bench_identity_init.py ../shared/data --init identity
    OMP_NUM_THREADS=1 python benchmarks/bench_identity_init.py ../shared/data --init default
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lorun_peft import CASSI, LoRunModel
from lorun_peft.data.cubes import KAIST_WAVELENGTHS_28, load_cube
from lorun_peft.denoisers import build_denoiser
from lorun_peft.metrics import cassi_psnr
from lorun_peft.physics import load_cassi_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="data root with CASSI/cubes and CASSI/simulation")
    parser.add_argument("--init", choices=("identity", "default"), required=True)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mask = load_cassi_mask(args.data_dir / "CASSI/simulation/mask.mat")[:64, :64].contiguous()
    cube = load_cube(args.data_dir / "CASSI/cubes/stuffed_toys.npz", wavelengths=KAIST_WAVELENGTHS_28)
    clean = torch.stack([cube[:, 300:364, 300:364], cube[:, 100:164, 350:414]])
    denoiser = build_denoiser("unet", 28, 32, 3, identity_init=args.init == "identity")
    model = LoRunModel.from_components(CASSI(mask), denoiser, num_stages=9, algorithm="hqs").train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    y = model.physics.A(clean)
    initial = float(cassi_psnr(model.physics.init(y).clamp(0, 1), clean))
    print(f"init={args.init}: initial estimate {initial:.2f} dB")
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = F.mse_loss(model(y).images, clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            with torch.no_grad():
                out = model(y, return_stages=True)
            stages = [round(float(cassi_psnr(s.clamp(0, 1), clean)), 1) for s in out.stages]
            psnr = float(cassi_psnr(out.images.clamp(0, 1), clean))
            print(
                f"step {step}: {psnr:.2f} dB, stages {stages} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()

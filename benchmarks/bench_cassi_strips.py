"""Square crops vs full-width strips for CASSI training, at the same pixels per batch (docs/tasks_cassi.md).

A crop ``w`` pixels wide measures only the bands that land inside it: with a 2-pixel dispersion and 28
bands, 16 % of a 64x64 crop's (pixel, band) values reach a detector column that sums all 28 bands,
against 79 % for a 256-wide scene. So 64x64 training crops pose an easier problem than the test
scene. This trains the same network (HQS, K = 9, U-Net width 32, identity init, Adam 1e-3 cosine,
clip 1.0, bf16 autocast, one thread) on random crops of stuffed_toys (flips, +-20 % smooth band gain,
overall brightness 0.5-1.5, a new crop of the TSA simulation mask per batch) in either shape, and
scores the whole cloth cube (never trained on) every 500 steps.

    OMP_NUM_THREADS=1 python benchmarks/bench_cassi_strips.py ../shared/data --height 64 --width 64 --batch 4
    OMP_NUM_THREADS=1 python benchmarks/bench_cassi_strips.py ../shared/data --height 32 --width 256 --batch 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lorun_peft import CASSI, LoRunModel
from lorun_peft.data.cubes import KAIST_WAVELENGTHS_28, load_cube
from lorun_peft.denoisers import build_denoiser
from lorun_peft.metrics import cassi_psnr, cassi_ssim
from lorun_peft.physics import load_cassi_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="data root with CASSI/cubes and CASSI/simulation")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=1500, help="length of the cosine schedule")
    parser.add_argument("--stop", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--log", type=Path, default=None, help="JSON lines of loss and cloth scores")
    args = parser.parse_args()
    height, width, batch_size, steps = args.height, args.width, args.batch, args.steps
    torch.set_num_threads(1)
    data = args.data_dir
    mask = load_cassi_mask(data / "CASSI/simulation/mask.mat")
    toys = load_cube(data / "CASSI/cubes/stuffed_toys.npz", wavelengths=KAIST_WAVELENGTHS_28)
    cloth = load_cube(data / "CASSI/cubes/cloth.npz", wavelengths=KAIST_WAVELENGTHS_28)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    denoiser = build_denoiser("unet", 28, 32, 3, identity_init=True)
    physics = CASSI(mask[:height, :width].clone())
    model = LoRunModel.from_components(physics, denoiser, num_stages=9, algorithm="hqs").train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )

    def batch() -> torch.Tensor:
        patches = []
        for _ in range(batch_size):
            top = int(torch.randint(0, toys.shape[1] - height + 1, (1,), generator=g))
            left = int(torch.randint(0, toys.shape[2] - width + 1, (1,), generator=g))
            x = toys[:, top : top + height, left : left + width]
            if torch.rand(1, generator=g) < 0.5:
                x = x.flip(-1)
            if torch.rand(1, generator=g) < 0.5:
                x = x.flip(-2)
            if height == width and torch.rand(1, generator=g) < 0.5:
                x = x.transpose(-1, -2)
            gain = 0.8 + 0.4 * torch.rand(4, generator=g)
            per_band = F.interpolate(gain.view(1, 1, 4), size=28, mode="linear", align_corners=True)
            brightness = 0.5 + torch.rand(1, generator=g)
            patches.append((x * per_band.view(28, 1, 1) * brightness).clamp(0, 1))
        top = int(torch.randint(0, mask.shape[0] - height + 1, (1,), generator=g))
        left = int(torch.randint(0, mask.shape[1] - width + 1, (1,), generator=g))
        model.physics.mask.copy_(mask[top : top + height, left : left + width])
        return torch.stack(patches)

    def score_cloth() -> tuple[float, float]:
        model.eval()
        with torch.no_grad(), model.active_task.swapped_physics(CASSI(mask)) as full:
            restored = model(full.A(cloth[None])).images.clamp(0, 1)
        model.train()
        return float(cassi_psnr(restored[0], cloth)), float(cassi_ssim(restored[0], cloth))

    log = open(args.log, "w") if args.log else None  # noqa: SIM115 - written through the run
    started = time.perf_counter()
    for step in range(1, (args.stop or steps) + 1):
        clean = batch()
        y = model.physics.A(clean)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            restored = model(y).images
        loss = F.mse_loss(restored.float(), clean)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        record = None
        if step % 500 == 0:
            psnr, ssim = score_cloth()
            record = {"step": step, "cloth_psnr": psnr, "cloth_ssim": ssim}
            print(
                f"step {step}: cloth {psnr:.2f} dB / {ssim:.4f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        elif step % 50 == 0:
            record = {"step": step, "loss": loss.item()}
        if record and log:
            record["t"] = time.perf_counter() - started
            log.write(json.dumps(record) + "\n")
            log.flush()


if __name__ == "__main__":
    main()

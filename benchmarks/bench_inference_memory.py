"""Peak memory and time of LoRunModel.restore on large inputs: whole image vs tiled, and bf16 inference.

Each case runs in a fresh process (benchmarks/memory_probe.py): the model and the measurement are built
first, then the peak-RSS counter is reset and ``restore`` runs once; reported is the peak RSS during
``restore`` minus the RSS before it (what restoring needed on top of the model and the input), and its
wall time. Cases:

* ``cs``: the shipped CS model (25 % set) on a 2048 x 2048 mosaic of Set11 images, whole and tiled
  (``tile_size=256``, ``tile_overlap=64``);
* ``sr``: the shipped SR model (x2-k1) on a 2K frame (2048 x 1080 HR, a mosaic of Set5 images), whole
  and tiled (``tile_size=256``, ``tile_overlap=64`` HR pixels);
* ``cassi``: a K = 9 HQS CASSI model with the default U-Net (28 bands, random weights: no CASSI model
  ships yet; memory and time do not depend on the weights) on the real TSA ``scene1`` measurement
  (660 x 714) with its 660 x 660 mask, whole image (CASSI's dispersion couples columns across the image,
  so it has no tiled path); compared with the plain ``no_grad`` forward.

Tiled results are compared with the whole-image ones (max abs difference, PSNR of each against the
clean image). ``--bf16`` also times the shipped CS model on Set11 in fp32 and with
``autocast_dtype=torch.bfloat16`` (only where the CPU computes bf16 natively) and scores both.

    python benchmarks/bench_inference_memory.py --data-dir ../shared/data --bf16 \
        --output benchmarks/results/inference_memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from memory_probe import emit, reset_peak, run_child, status_kb

from lorun_peft.evaluation.report import write_atomic

CASES = {
    "cs-full": ("cs", None),
    "cs-tiled": ("cs", 256),
    "sr-full": ("sr", None),
    "sr-tiled": ("sr", 256),
    "cassi-full": ("cassi", None),
    "cassi-no-grad-forward": ("cassi", "forward"),
}
OVERLAP = 64
BORDER = 16  # pixels from the image border left out of the second tiled-vs-whole difference


def _images(folder: Path, size: int, mode: str = "L") -> list[np.ndarray]:
    """The images of ``folder`` resized to ``size`` x ``size``, ``(C, size, size)`` in [0, 1]."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".bmp", ".jpg"))
    arrays = [
        np.asarray(Image.open(f).convert(mode).resize((size, size)), dtype=np.float32) / 255 for f in files
    ]
    return [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]


def mosaic(data_dir: Path, folder: str, height: int, width: int, tile: int, mode: str = "L") -> torch.Tensor:
    """A ``(1, C, height, width)`` mosaic of the images in ``data_dir/folder`` (cycled)."""
    images = _images(data_dir / folder, tile, mode)
    rows, cols = -(-height // tile), -(-width // tile)
    grid = np.zeros((images[0].shape[0], rows * tile, cols * tile), np.float32)
    for index in range(rows * cols):
        r, c = divmod(index, cols)
        grid[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = images[index % len(images)]
    return torch.from_numpy(grid[:, :height, :width].copy())[None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(0, 1) - b).double().pow(2).mean().item()
    return 10 * np.log10(1 / mse)


def build_case(task: str, data_dir: Path):
    """(model, measurement, clean image or None)."""
    from lorun_peft.pretrained import load_pretrained

    if task == "cs":
        model = load_pretrained("cs", "ratio-25")
        clean = mosaic(data_dir, "Set11", 2048, 2048, 256)
    elif task == "sr":
        model = load_pretrained("sr", "x2-k1")
        clean = mosaic(data_dir, "Set5", 1080, 2048, 256, mode="RGB")
    else:
        from lorun_peft.denoisers import build_denoiser
        from lorun_peft.physics import CASSI, load_cassi_mask, load_cassi_measurement
        from lorun_peft.unfolding import LoRunModel

        torch.manual_seed(0)
        mask = load_cassi_mask(data_dir / "CASSI" / "real_TSA" / "mask.mat")
        model = LoRunModel.from_components(
            CASSI(mask, step=2), build_denoiser("unet", 28, None, None), num_stages=9, algorithm="hqs"
        ).eval()
        y = load_cassi_measurement(data_dir / "CASSI" / "real_TSA" / "measurements" / "scene1.mat") * 14
        return model, y, None
    with torch.no_grad():
        y = model.physics.measure(clean)
    return model, y[0], clean[0]


def child(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    task, tile = CASES[spec["case"]]
    model, y, clean = build_case(task, Path(spec["data_dir"]))
    start_kb = status_kb("VmRSS")
    reset = reset_peak()
    start = time.perf_counter()
    if tile == "forward":
        with torch.no_grad():
            out = model(y[None]).images[0]
    elif tile is None:
        out = model.restore(y)
    else:
        out = model.restore(y, tile_size=tile, tile_overlap=OVERLAP)
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM")
    np.save(spec["output"], out.numpy())
    emit(
        {
            "peak_bytes": (peak - start_kb) * 1024 if reset else None,
            "seconds": seconds,
            "input_shape": list(y.shape),
            "output_shape": list(out.shape),
            "psnr": None if clean is None else _psnr(out, clean),
        }
    )


def bf16_inference(data_dir: Path) -> dict:
    """Shipped CS (25 %) on Set11: fp32 vs bf16-autocast restore, PSNR and time (interleaved, 3 reps)."""
    from lorun_peft.pretrained import load_pretrained
    from lorun_peft.training.precision import cpu_supports_bf16

    if not cpu_supports_bf16():
        return {"skipped": "this CPU has no native bf16 (AVX512-BF16/AMX)"}
    model = load_pretrained("cs", "ratio-25")
    images = [torch.from_numpy(a) for a in _images(data_dir / "Set11", 256)]
    measurements = [model.physics.measure(x[None])[0] for x in images]
    report = {}
    for dtype in (None, torch.bfloat16, None, torch.bfloat16, None, torch.bfloat16):
        label = "fp32" if dtype is None else "bf16"
        start = time.perf_counter()
        outs = [model.restore(y, autocast_dtype=dtype) for y in measurements]
        seconds = time.perf_counter() - start
        psnr = float(np.mean([_psnr(o, x) for o, x in zip(outs, images)]))
        entry = report.setdefault(label, {"seconds": [], "psnr": psnr})
        entry["seconds"].append(seconds)
    for entry in report.values():
        entry["seconds"] = float(np.median(entry["seconds"]))
    report["psnr_difference_db"] = report["bf16"]["psnr"] - report["fp32"]["psnr"]
    report["time_ratio"] = report["bf16"]["seconds"] / report["fp32"]["seconds"]
    report["note"] = "Set11 resized to 256x256 (one image size for the timing)"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, required=False, help="data root (Set11, Set5, CASSI/real_TSA)"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES)
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="also compare bf16 and fp32 inference on Set11")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return 0
    if args.data_dir is None or not args.data_dir.is_dir():
        parser.error("--data-dir must be the data root holding Set11, Set5 and CASSI/real_TSA")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if any(c not in CASES for c in cases):
        parser.error(f"--cases from {list(CASES)}, got {cases}")
    results: dict = {"threads": args.threads, "tile_overlap": OVERLAP}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for case in cases:
            outputs[case] = str(Path(tmp) / f"{case}.npy")
            spec = {
                "case": case,
                "data_dir": str(args.data_dir),
                "threads": args.threads,
                "output": outputs[case],
            }
            results[case] = run_child([__file__, "--child", json.dumps(spec)], threads=args.threads)
            print(f"  {case:<24} {results[case]}", flush=True)
            _write(args.output, results)  # partial results survive a later failure
        for task in ("cs", "sr"):
            full, tiled = f"{task}-full", f"{task}-tiled"
            if full in outputs and tiled in outputs:
                a, b = np.load(outputs[full]), np.load(outputs[tiled])
                results[f"{task}-tiled"]["max_abs_difference_to_full"] = float(np.abs(a - b).max())
                inner = np.abs(a - b)[..., BORDER:-BORDER, BORDER:-BORDER]  # SR: the periodic border
                results[f"{task}-tiled"]["max_abs_difference_inside_border"] = float(inner.max())
                results[f"{task}-tiled"]["peak_ratio_to_full"] = (
                    results[tiled]["peak_bytes"] / results[full]["peak_bytes"]
                    if results[tiled]["peak_bytes"] and results[full]["peak_bytes"]
                    else None
                )
    if args.bf16:
        results["bf16_inference"] = bf16_inference(args.data_dir)
        print(f"  bf16 inference: {results['bf16_inference']}")
    print("\n| case | input | peak (MiB) | time (s) | PSNR (dB) | max diff to whole |")
    print("|---|---|---:|---:|---:|---:|")
    for case in cases:
        r = results[case]
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        psnr = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        diff = r.get("max_abs_difference_to_full")
        print(
            f"| {case} | {'x'.join(map(str, r['input_shape']))} | {peak} | {r['seconds']:.1f} | {psnr} | "
            f"{'-' if diff is None else f'{diff:.2e}'} |"
        )
    _write(args.output, results)
    return 0


def _write(path: Path | None, results: dict) -> None:
    if path is not None:
        write_atomic(path, json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""``lorun evaluate``: score a model on a folder of test images or cubes with its task's protocol.

A thin front of :func:`lorun_peft.evaluation.evaluate_folder`: it loads the model selected by the shared
model options, shows a progress bar on a terminal (:class:`_ProgressBar`), writes metrics.csv,
metrics.json and the restored images, and prints the per-item table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lorun_peft.help import HelpFormatter
from lorun_peft.tasks import task_for_physics

from .common import _add_model_arguments, _describe_physics, _load_model, _model_line


def run_evaluate(args: argparse.Namespace) -> int:
    from lorun_peft.evaluation import evaluate_folder

    start = time.perf_counter()
    folder = Path(args.folder)
    if not folder.exists():
        raise FileNotFoundError(f"test data {folder} does not exist (expected a folder of images or cubes)")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if args.noise_sigma < 0:
        raise ValueError(f"--noise-sigma must be >= 0, got {args.noise_sigma}")
    import datasets

    model, where = _load_model(args)
    mask = None
    if args.mask is not None:
        spec = task_for_physics(model)
        if not spec.evaluates_with_one_mask:
            raise ValueError(f"--mask is for CASSI models, this one is a {spec.name!r} model")
        mask = spec.read_mask(Path(args.mask))
    output_dir = Path(args.output_dir)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the folder is read through `datasets`; keep the output a table
    progress = _ProgressBar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = evaluate_folder(
            model,
            None,
            folder,
            max_items=args.max_images,
            noise_sigma=args.noise_sigma,
            seed=args.seed,
            stagewise=args.stagewise,
            save_dir=output_dir / "images" if args.save_images else None,
            mask=mask,
            progress=progress,
        )
    finally:
        progress.close()
        if bars:
            datasets.enable_progress_bars()
    report.metadata.update({"model": where, "adapter_set": model.active_adapter_set})
    paths = report.save(output_dir)
    print(f"model: {_model_line(model)} from {where}")
    print(f"physics: {_describe_physics(model.physics.get_config())}")
    print(f"data: {folder} ({len(report.items)} item(s))")
    print(f"protocol: {report.protocol}")
    print(report.format_table())
    extra = [f"{output_dir / 'images'}/"] if args.save_images else []
    print("wrote " + ", ".join([*(str(p) for p in paths.values()), *extra]))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


class _ProgressBar:
    """A tqdm bar on stderr, advanced per scored item with its PSNR; nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int, item: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="evaluate", unit="item", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{item.name}: {item.psnr:.2f} dB", refresh=False)
        self.bar.update(1)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``lorun evaluate`` to the subcommands."""
    parser = commands.add_parser(
        "evaluate",
        help="score a model on a folder of test images or cubes (per-image PSNR/SSIM table)",
        description="Simulate each test item's measurement with the model's physics, restore it and score it "
        "with the task's published protocol (lorun_peft.evaluation). Writes metrics.csv, metrics.json, "
        "restored images and, with --stagewise, stagewise.csv/png into --output-dir.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("folder", help="folder of test images (CS gray, SR RGB) or .npz/.mat cubes (CASSI)")
    parser.add_argument(
        "--output-dir", default="lorun_eval", metavar="DIR", help="where metrics and images go"
    )
    parser.add_argument("--stagewise", action="store_true", help="also score every stage")
    parser.add_argument(
        "--no-images", dest="save_images", action="store_false", help="do not save the restored images"
    )
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N items")
    parser.add_argument("--noise-sigma", type=float, default=0.0, metavar="S", help="measurement noise std")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (it is shown on stderr only when that is a terminal)",
    )
    parser.add_argument(
        "--mask",
        default=None,
        metavar="PATH.mat",
        help="CASSI: the full coded aperture to measure with (for a set trained on crops of it; default: "
        "the set's own mask)",
    )
    _add_model_arguments(parser)
    parser.set_defaults(func=run_evaluate)

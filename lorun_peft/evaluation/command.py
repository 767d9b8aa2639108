"""The evaluation command of ``examples/evaluate.py`` (``lorun evaluate`` has its own flags, docs/cli.md).

:class:`EvaluateArguments` (an ``HfArgumentParser`` dataclass) names a backbone (block, shared, or shared
plus ``--adapter_set``), the test data and the output folder; :func:`run_evaluation` loads the model, picks
the task from its physics, scores the test items (:func:`~lorun_peft.evaluation.evaluate_items`), saves
``metrics.csv``/``metrics.json`` (and stage-wise curves, restored images) and prints the table; with
``--real_cassi`` it reconstructs real CASSI measurements instead. Data default to ``<repo>/../shared/data``
(Set11 for CS, Set5 for SR, CASSI/cubes/cloth.npz for CASSI); ``--smoke`` falls back to the shipped sample
images (synthetic cubes and mask for CASSI).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorun_peft.tasks import default_data_dir, get_task
from lorun_peft.tasks.cassi_inputs import DEFAULT_MASK, SMOKE_MASK_SIZE, synthetic_mask

from .report import EvaluationReport
from .runner import evaluate_items, load_test_items, reconstruct_real_cassi, task_of

__all__ = ["EvaluateArguments", "load_model", "main", "run_evaluation"]

DEFAULT_REAL_MASK = "CASSI/real_TSA/mask.mat"


@dataclass
class EvaluateArguments:
    """What to evaluate, on which data, and where the results go."""

    backbone: str = field(metadata={"help": "Backbone folder or Hub id (a block, shared or phase-1 model)."})
    adapter_set: str | None = field(
        default=None,
        metadata={"help": "Adapter set: a set folder, a folder or Hub repo holding <adapter_set_name>/."},
    )
    adapter_set_name: str | None = field(default=None, metadata={"help": "Which set in --adapter_set."})
    test_data: str | None = field(
        default=None,
        metadata={
            "help": "Test folder (images) or folder/file of cubes. Default under data_dir: Set11 (CS), "
            "Set5 (SR), CASSI/cubes/cloth.npz (CASSI)."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Data root (default: $LORUN_DATA_DIR or <repo>/../shared/data)."}
    )
    output_dir: str = field(default="runs/eval", metadata={"help": "Where metrics and images are written."})
    mask: str | None = field(
        default=None,
        metadata={
            "help": "CASSI: full mask .mat for the test cubes (default: the model's if it fits the cubes, "
            "else <data_dir>/CASSI/simulation/mask.mat)."
        },
    )
    stagewise: bool = field(default=False, metadata={"help": "Also score every stage (CSV + PNG curve)."})
    save_images: bool = field(
        default=True, metadata={"help": "Save restored images (PNG; cubes: PNG + .npz)."}
    )
    noise_sigma: float = field(default=0.0, metadata={"help": "Measurement noise std (seeded per image)."})
    seed: int = field(default=0, metadata={"help": "Seed of the measurement noise."})
    max_images: int | None = field(default=None, metadata={"help": "Evaluate only the first N items."})
    real_cassi: str | None = field(
        default=None,
        metadata={"help": "CASSI: folder or .mat file of real measurements (TSA 660x714) to reconstruct."},
    )
    real_mask: str | None = field(
        default=None, metadata={"help": "Mask of --real_cassi (default: <data_dir>/CASSI/real_TSA/mask.mat)."}
    )
    real_scale: str = field(
        default="mst",
        metadata={
            "help": "Scale of --real_cassi measurements: 'mst' multiplies by C/2 (TSA/MST store real "
            "measurements divided by C/2, e.g. 14 for 28 bands), or a positive number."
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)."}
    )
    smoke: bool = field(
        default=False,
        metadata={"help": "Without data: evaluate on 2 shipped sample images (or synthetic cubes)."},
    )


def load_model(args: EvaluateArguments) -> Any:
    """The backbone, with ``--adapter_set`` loaded and active, in eval mode on ``--device``.

    Loaded by :func:`lorun_peft.pretrained.load_model`, as ``lorun`` loads a model. With
    ``--adapter_set_name``, ``--adapter_set`` is the folder or Hub repo holding that set; alone, it is one
    set: a set folder, or a set's name beside the backbone.
    """
    from lorun_peft import pretrained

    if args.adapter_set_name is not None and args.adapter_set is None:
        raise ValueError("--adapter_set_name needs --adapter_set (the folder or Hub repo holding the set)")
    if args.adapter_set_name is not None:
        model = pretrained.load_model(args.backbone, args.adapter_set, args.adapter_set_name)
    else:
        model = pretrained.load_model(args.backbone, None, args.adapter_set)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device)


def _data_root(args: EvaluateArguments) -> Path | None:
    return Path(args.data_dir) if args.data_dir else default_data_dir()


def _mask(args: EvaluateArguments, model: Any, items: list) -> torch.Tensor | None:
    """CASSI: the full mask for the test cubes, or ``None`` to use the model's own."""
    from lorun_peft.physics import load_cassi_mask

    if args.mask is not None:
        return load_cassi_mask(args.mask)
    height = max(image.shape[-2] for _, image in items)
    width = max(image.shape[-1] for _, image in items)
    own = model.physics.mask.shape
    if own[0] >= height and own[1] >= width:
        return None
    root = _data_root(args)
    if root is not None and (root / DEFAULT_MASK).is_file():
        return load_cassi_mask(root / DEFAULT_MASK)
    if args.smoke:
        return synthetic_mask(SMOKE_MASK_SIZE, args.seed)
    raise FileNotFoundError(
        f"the model's mask is {own[0]}x{own[1]} (trained on crops) but the test cubes are {height}x{width}: "
        "pass --mask PATH.mat (the full coded aperture)"
    )


def _items(args: EvaluateArguments, task: str, bands: int) -> tuple[list, str]:
    spec = get_task(task)
    if args.test_data is not None:
        return load_test_items(task, args.test_data, bands=bands, max_items=args.max_images), args.test_data
    root = _data_root(args)
    if root is not None and spec.test_data and (root / spec.test_data).exists():
        source = root / spec.test_data
        return load_test_items(task, source, bands=bands, max_items=args.max_images), str(source)
    if args.smoke:
        task_args = spec.arguments(bands=bands) if hasattr(spec.arguments, "bands") else None
        items = spec.smoke_items(task_args, size=SMOKE_MASK_SIZE, count=args.max_images or 2)
        return items, "shipped sample images"
    raise FileNotFoundError(
        f"no test data: {spec.test_data} not found under --data_dir or <repo>/../shared/data; "
        "pass --test_data FOLDER (or --smoke)"
    )


def run_evaluation(args: EvaluateArguments) -> EvaluationReport | list[Path]:
    """Evaluate (or, with ``--real_cassi``, reconstruct) and write everything into ``--output_dir``."""
    from lorun_peft.physics import CASSI, load_cassi_mask

    model = load_model(args)
    task = task_of(model)
    output_dir = Path(args.output_dir)
    bands = model.denoisers[0].config.in_channels
    if args.real_cassi is not None:
        root = _data_root(args)
        mask_path = args.real_mask or (str(root / DEFAULT_REAL_MASK) if root is not None else None)
        if mask_path is None:
            raise FileNotFoundError("--real_cassi needs --real_mask PATH.mat (the real 660x660 mask)")
        written = reconstruct_real_cassi(
            model, args.real_cassi, load_cassi_mask(mask_path), output_dir, measurement_scale=args.real_scale
        )
        print(f"reconstructed {len(written) // 2} real measurement(s) into {output_dir}")
        return written
    items, source = _items(args, task, bands)
    mask = _mask(args, model, items) if isinstance(model.physics, CASSI) else None
    report = evaluate_items(
        model,
        task,
        items,
        mask=mask,
        noise_sigma=args.noise_sigma,
        seed=args.seed,
        stagewise=args.stagewise,
        save_dir=output_dir / "images" if args.save_images else None,
    )
    report.metadata.update(
        {"backbone": args.backbone, "adapter_set": model.active_adapter_set, "data": source}
    )
    paths = report.save(output_dir)
    print(f"{task.upper()} | {model.mode} | {model.physics.get_config()} | {source}")
    print(report.protocol)
    print(report.format_table())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Parse ``argv`` and run; 0 on success, 2 with one ``error:`` line on bad input."""
    from transformers import HfArgumentParser

    from lorun_peft.help import HelpFormatter

    parser = HfArgumentParser(EvaluateArguments, description=description, formatter_class=HelpFormatter)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        run_evaluation(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    return 0

"""``lorun export``: write, offline, the folder a Hub push would upload (weights and model card).

The folder is written by :func:`lorun_peft.hub.export_repo` and is uploaded later as is with
``hf upload REPO_ID FOLDER .``; adapter sets are picked with ``--set NAME``, not with the task-mode
options of the other subcommands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorun_peft.help import HelpFormatter

from .common import _add_model_arguments


def run_export(args: argparse.Namespace) -> int:
    from lorun_peft import pretrained
    from lorun_peft.hub import check_replaceable, check_repo_id, export_repo

    check_repo_id(args.repo_id)
    chosen = [flag for flag in ("ratio", "scale", "kernel", "adapter_set") if getattr(args, flag) is not None]
    if chosen:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in chosen)
        raise ValueError(f"lorun export picks adapter sets with --set NAME (repeatable), not {flags}")
    sources = [
        Path(p).expanduser() for p in (args.backbone, args.adapters) if p and Path(p).expanduser().exists()
    ]
    check_replaceable(Path(args.output).expanduser(), args.overwrite, keep=[Path.cwd(), *sources])
    metrics = {}
    if args.metrics:
        from lorun_peft.io import read_json_object

        advice = '--metrics expects {"backbone": {dataset: {metric: value}}, "<set>": {dataset: {...}}}'
        metrics = read_json_object(args.metrics, advice)
    if args.no_backbone and "backbone" in metrics:
        raise ValueError(
            "--metrics has 'backbone' scores, but --no-backbone exports no backbone to attach them to"
        )
    base_model = args.base_model
    if args.backbone is not None:
        model = pretrained.load_model(args.backbone, args.adapters)
    elif args.adapters is not None:
        backbone = pretrained.pretrained_dir(args.task or "cs", args.pretrained_dir) / pretrained.BACKBONE_DIR
        model = pretrained.load_model(backbone, args.adapters)
    else:
        model = pretrained.load_pretrained(args.task or "cs", None, args.pretrained_dir)  # every set
    if base_model is None and args.backbone is None:  # the shipped backbone's Hub repo
        from lorun_peft.hub import SHIPPED_HUB_OWNER

        base_model = f"{SHIPPED_HUB_OWNER}/{args.task or 'cs'}-backbone"
    folder = export_repo(
        model,
        args.output,
        args.repo_id,
        sets=args.set,
        backbone=not args.no_backbone,
        metrics=metrics.pop("backbone", None),
        set_metrics=metrics,
        base_model=base_model,
        overwrite=args.overwrite,
    )
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    print(f"exported {len(files)} files for {args.repo_id} to {folder}:")
    for name in files:
        print(f"  {name}")
    print(f"upload with: hf upload {args.repo_id} {folder} .")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``lorun export`` to the subcommands."""
    parser = commands.add_parser(
        "export",
        help="write the folder a Hub push would upload, offline (upload it later with `hf upload`)",
        description="Write a backbone and its adapter sets (or only the sets) with the model card a push "
        "would generate, into one folder that from_pretrained/load_adapter read back and `hf upload REPO_ID "
        "FOLDER .` uploads as is. No network access.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("output", help="the folder to write (a new or empty one; see --overwrite)")
    parser.add_argument(
        "--repo-id", required=True, metavar="ID", help="the Hub repo it is meant for (owner/name)"
    )
    parser.add_argument(
        "--set", action="append", default=None, metavar="NAME", help="export only this set (repeatable)"
    )
    parser.add_argument(
        "--no-backbone",
        action="store_true",
        help="adapter sets only (an adapters repo; base_model in the card)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT whole when it already holds files"
    )
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="ID",
        help="with --no-backbone: the backbone repo named in the card (default: lorun-peft/<task>-backbone "
        "for the shipped model, else the backbone's Hub id when it was loaded by one)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        metavar="JSON",
        help='scores for the card: {"backbone": {dataset: {metric: value}}, "<set>": {dataset: {...}}}',
    )
    _add_model_arguments(parser)
    parser.set_defaults(func=run_export)

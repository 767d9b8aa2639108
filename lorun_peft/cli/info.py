"""``lorun info``: what a model is (configuration, adapter sets, parameters) and what is installed.

``lorun info`` prints the backbone's configuration, every resident adapter set with its fingerprint,
steps and physics, the manifest of shipped assets and ``model.parameter_report()``; ``lorun info --list``
lists the installed pretrained tasks and their sets instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lorun_peft.help import HelpFormatter
from lorun_peft.tasks import task_names

from .common import _add_model_arguments, _describe_physics, _load_model, _model_line, _task_of


def _list_pretrained(root: str | None) -> int:
    from lorun_peft.pretrained import list_pretrained, pretrained_root
    from lorun_peft.tasks import get_task

    installed = list_pretrained(root)
    print(f"pretrained assets at {pretrained_root(root)}")
    if not installed:
        print("  none installed")
    for task, description in ((name, get_task(name).title) for name in task_names()):
        if task in installed:
            sets = ", ".join(installed[task]) or "no adapter sets"
            print(f"  {task:<6} {description}: {sets}")
    return 0


def _denoiser_line(config: dict[str, Any]) -> str:
    keys = (
        "in_channels",
        "out_channels",
        "base_channels",
        "depth",
        "hidden_channels",
        "num_blocks",
        "channels",
    )
    details = ", ".join(f"{key} {config[key]}" for key in keys if key in config)
    noise = ", noise-level map" if config.get("noise_level_map") else ""
    return f"{config.get('model_type', '?')} ({details}{noise})"


def run_info(args: argparse.Namespace) -> int:
    from lorun_peft.pretrained import read_manifest
    from lorun_peft.tuners import base_fingerprint
    from lorun_peft.tuners.stage import get_state

    if args.list:
        return _list_pretrained(args.pretrained_dir)
    model, where = _load_model(args)
    config = model.config
    print(f"model: {_model_line(model)} from {where}")
    print(
        f"task: {_task_of(model)} | mode: {model.mode} | K = {config.num_stages} | "
        f"algorithm: {config.algorithm}"
    )
    print(f"denoiser: {_denoiser_line(config.denoiser)}")
    print(f"phase-1 physics: {_describe_physics(model.task.physics.get_config())}")
    sets = model.list_adapter_sets()
    if sets:
        fingerprint = base_fingerprint(model.shared_denoiser)
        short = fingerprint.split(":")[-1][:12]
        _, state = get_state(model.shared_denoiser)
        print(f"backbone fingerprint: {fingerprint} (every set was checked against it when loaded)")
        print(f"adapter sets ({len(sets)}, active: {model.active_adapter_set}):")
        print(f"  {'name':<12} {'K':>3} {'gamma':>6} {'layout':<7} {'fingerprint':<13} {'steps':<22} physics")
        for name in sets:
            record = state.sets[name]
            first = record.configs[0]
            task = model.adapter_tasks[name]
            step = task.steps.step.detach()
            steps = f"{task.steps.step_name} {float(step.min()):.3g}..{float(step.max()):.3g}"
            print(
                f"  {name:<12} {record.num_stages:>3} {first.gamma:>6g} {first.conv_layout:<7} "
                f"{short:<13} {steps:<22} {_describe_physics(task.physics.get_config())}"
            )
    if args.backbone is None and args.adapters is None:
        manifest = read_manifest(args.task or "cs", args.pretrained_dir)
        for key, value in manifest.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            print(f"manifest {key}: {text}")
    print("parameters (base = denoiser, adapters = stage LoRA, task = physics and steps):")
    print(model.parameter_report().format())
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``lorun info`` to the subcommands."""
    parser = commands.add_parser(
        "info",
        help="configuration, adapter sets and parameter report of a model",
        description="Print the backbone's configuration, every resident adapter set (K, gamma, layout, "
        "fingerprint, steps, physics), the manifest of shipped assets and model.parameter_report().",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--list", action="store_true", help="list the installed pretrained tasks and sets")
    _add_model_arguments(parser)
    parser.set_defaults(func=run_info)

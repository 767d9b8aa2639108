"""``lorun train``: print how to train, with the example scripts (it trains nothing itself).

Training is the example scripts' job (``examples/train_<task>.py`` under ``accelerate launch``); this
subcommand prints the two-phase recipe of each task from its :class:`~lorun_peft.tasks.TaskSpec` and the
precision notes, so the command line points at them.
"""

from __future__ import annotations

import argparse

from lorun_peft.help import HelpFormatter
from lorun_peft.tasks import task_names


def run_train(args: argparse.Namespace) -> int:
    from lorun_peft.tasks import get_task, repo_root

    tasks = task_names() if args.task == "all" else (args.task,)
    examples = repo_root() / "examples"
    where = (
        f"found in {examples}"
        if examples.is_dir()
        else "in the source repository (not installed with the package)"
    )
    print("LoRun trains in two phases with the example scripts (examples/, " + where + "):")
    print(
        "  phase 1 (--mode shared) trains one denoiser shared by the K stages (Block-K-share): the backbone;"
    )
    print("  phase 2 (--mode lorun --backbone DIR) freezes it and trains one adapter set per task mode")
    print("  (K stage LoRA adapters + the set's own physics and steps). --mode block trains Block-K.")
    for task in tasks:
        spec = get_task(task)
        script = f"examples/train_{task}.py"
        print()
        print(f"{task}: {spec.title}")
        for options in spec.recipe:
            print(f"  accelerate launch {script} {options}")
    print()
    from lorun_peft.training.precision import cpu_supports_bf16

    native = "yes" if cpu_supports_bf16() else "no, so fp32"
    print("Precision: the scripts default to --mixed_precision auto (bf16 autocast where the device computes")
    print(
        f"bf16 natively; this CPU: {native}) and --channels_last; --mixed_precision no --channels_last False"
    )
    print("trains plain fp32. --gradient_checkpointing cuts activation memory (docs/training.md).")
    print()
    print("Notes: `python examples/train_<task>.py ...` runs one process without accelerate; add")
    print("`--multi_gpu --num_processes N` after `accelerate launch` for N GPUs; `--smoke` is a seconds-long")
    print("check without data; `python examples/train_<task>.py --help` lists every option. Each run needs")
    print("its own --output_dir (a set is saved into <output_dir>/<set name>). Then:")
    print("  lorun info --backbone runs/cs/backbone --adapters runs/cs/sets/r10")
    print("  lorun evaluate ../shared/data/Set11 --backbone runs/cs/backbone --adapters runs/cs/sets/r10")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``lorun train`` to the subcommands."""
    parser = commands.add_parser(
        "train",
        help="how to train backbones and adapter sets (the example scripts)",
        description="Print the accelerate commands of the two training phases for each task.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--task", choices=(*task_names(), "all"), default="all", help="which task's recipe")
    parser.set_defaults(func=run_train)

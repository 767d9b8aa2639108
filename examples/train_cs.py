"""Train a LoRun deep unfolding network for block compressive sensing (CS).

Phase 1 (``--mode shared``, Block-K-share) or the Block-K baseline (``--mode block``) saves a backbone into
``--output_dir``; phase 2 (``--mode lorun --backbone DIR``) adds K stage LoRA adapters for ``--ratio`` and
saves the adapter set into ``--output_dir/<adapter_set_name>``. Data: Train400 (gray) under
``<repo>/../shared/data`` or ``--train_data``; Phi is learned (paper) unless ``--phi_matrix`` gives
ISTA-Net's. Defaults follow the paper: K = 9, PGD, gamma = 10, Adam, l2 loss, rho = lambda = 0.5.

    python examples/train_cs.py --mode shared --ratio 0.25 --output_dir runs/cs/backbone
    python examples/train_cs.py --mode lorun --backbone runs/cs/backbone --ratio 0.10 \
        --output_dir runs/cs/sets/r10      # -> runs/cs/sets/r10/ratio-10
    accelerate launch --multi_gpu --num_processes 2 examples/train_cs.py --mode shared ...
    python examples/train_cs.py --smoke --output_dir /tmp/cs-smoke      # seconds, no data needed

See docs/tasks_cs.md.
"""

import sys
import time
from dataclasses import replace

import torch

from lorun_peft.recipes import (
    TrainingSummary,
    apply_smoke,
    build_model,
    evaluation_during_training,
    is_main_process,
    parse_training_args,
    save_run,
    start_run,
    training_data,
)
from lorun_peft.tasks import get_task
from lorun_peft.training import train

TASK = "cs"


def train_cs(task_args, data, model_args, training) -> TrainingSummary:
    """One training phase: phase 1 saves a backbone, phase 2 (``--mode lorun``) an adapter set."""
    started = time.perf_counter()
    spec = get_task(TASK)
    data, model_args, training = apply_smoke(spec, data, model_args, training)
    training = replace(training, **spec.training_overrides(task_args))  # e.g. a denoising set's noise
    set_name = start_run(spec, task_args, model_args, training)  # one output folder per run
    torch.manual_seed(training.seed)
    where = {"smoke": model_args.smoke, "seed": training.seed, "data_dir": data.data_dir}
    physics, physics_text = spec.build_physics(task_args, data.patch_size, **where)
    dataset, data_text = training_data(spec, task_args, data, smoke=model_args.smoke, seed=training.seed)
    model = build_model(spec, task_args, model_args, physics, set_name=set_name, seed=training.seed)
    sampler = spec.physics_sampler(task_args, data.patch_size, **where)  # what to redraw per batch
    result = train(
        model,
        dataset,
        training,
        eval_fn=evaluation_during_training(spec, task_args, data, smoke=model_args.smoke),
        physics_sampler=sampler,
    )
    spec.finish_training(result.model, sampler)
    return save_run(
        result,
        spec,
        model_args,
        training,
        set_name=set_name,
        physics_text=physics_text,
        data_text=data_text,
        started=started,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run one training phase; 0 on success, 2 on bad input."""
    try:
        summary = train_cs(*parse_training_args(TASK, argv, description=__doc__))
    except (ValueError, FileNotFoundError) as error:
        print(f"train_cs: error: {error}", file=sys.stderr)
        return 2
    if is_main_process():
        print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a LoRun deep unfolding network for super-resolution with a known blur (SR).

The degradation is ``y = (x * k) downsampled by s`` (USRNet convention) with kernel ``--kernel K1..K12`` of
USRNet's ``kernels_12.mat`` and scale ``--scale 2|3|4``: one model (or adapter set) per kernel and scale,
as in the paper. Phase 1 (``--mode shared``) or Block-K (``--mode block``) saves a backbone into
``--output_dir``; phase 2 (``--mode lorun --backbone DIR``) saves the adapter set (default name
``x<s>-k<i>``) into ``--output_dir/<name>``. Data: BSDS500_train200 (RGB) or ``--train_data``; optional
measurement noise ``--noise_sigma``. Without kernels_12.mat, synthetic stand-ins are used with a warning.

    python examples/train_sr.py --mode shared --kernel K1 --scale 2 --output_dir runs/sr/backbone
    python examples/train_sr.py --mode lorun --backbone runs/sr/backbone --kernel K5 --scale 4 \
        --output_dir runs/sr/sets/x4k5
    python examples/train_sr.py --smoke --output_dir /tmp/sr-smoke

See docs/tasks_sr.md.
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

TASK = "sr"


def train_sr(task_args, data, model_args, training) -> TrainingSummary:
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
        summary = train_sr(*parse_training_args(TASK, argv, description=__doc__))
    except (ValueError, FileNotFoundError) as error:
        print(f"train_sr: error: {error}", file=sys.stderr)
        return 2
    if is_main_process():
        print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a LoRun deep unfolding network for pixel inpainting with random masks.

The degradation is ``y = M * x``: a binary mask ``M`` keeps each pixel with probability
``1 - --missing`` and is redrawn for every batch (at test time every image has its own). The operator
is a plain class behind ``lorun_peft.physics.as_operator`` (``PixelInpainting``: ``A``, ``A_adjoint`` and
its closed-form ``prox_l2``, the HQS step), the way a user's own operator runs. Phase 1
(``--mode shared``) saves a backbone; phase 2 (``--mode lorun --backbone DIR``) saves the adapter set
``missing-<percent>``. Data: Train400 (gray) or ``--train_data``.

    python examples/train_inpainting.py --mode shared --missing 0.7 --output_dir runs/inpainting/backbone
    python examples/train_inpainting.py --mode lorun --backbone runs/inpainting/backbone --missing 0.9 \
        --output_dir runs/inpainting/sets/m90      # -> runs/inpainting/sets/m90/missing-90
    python examples/train_inpainting.py --smoke --output_dir /tmp/inpainting-smoke

See docs/tasks_inpainting.md.
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

TASK = "inpainting"


def train_inpainting(task_args, data, model_args, training) -> TrainingSummary:
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
        summary = train_inpainting(*parse_training_args(TASK, argv, description=__doc__))
    except (ValueError, FileNotFoundError) as error:
        print(f"train_inpainting: error: {error}", file=sys.stderr)
        return 2
    if is_main_process():
        print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a LoRun deep unfolding network for coded aperture snapshot spectral imaging (SD-CASSI).

Cubes (``.npz``/``.mat``, H x W x C) are cropped at random, resampled to the 28 KAIST/TSA wavelengths
(CAVE: 31 bands, 400-700 nm) and measured on the fly with the coded aperture ``--mask`` (default: the TSA
256x256 simulation mask) and a 2-pixel dispersion; patches smaller than the mask use one random mask crop
of the patch size per run. The unfolding is HQS (paper). Phase 1 (``--mode shared``) or Block-K
(``--mode block``) saves a backbone; phase 2 (``--mode lorun --backbone DIR``) saves the adapter set.
Any band count works with ``--bands N`` when the cubes have N bands.

    python examples/train_cassi.py --mode shared --train_data ../shared/data/CASSI/cubes/stuffed_toys.npz \
        --patch_size 128 --output_dir runs/cassi/backbone
    python examples/train_cassi.py --mode lorun --backbone runs/cassi/backbone \
        --output_dir runs/cassi/sets/m28
    python examples/train_cassi.py --smoke --output_dir /tmp/cassi-smoke

See docs/tasks_cassi.md.
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

TASK = "cassi"


def train_cassi(task_args, data, model_args, training) -> TrainingSummary:
    """One training phase: phase 1 saves a backbone, phase 2 (``--mode lorun``) an adapter set."""
    started = time.perf_counter()
    spec = get_task(TASK)
    data, model_args, training = apply_smoke(spec, data, model_args, training)
    training = replace(training, **spec.training_overrides(task_args))  # e.g. a denoising set's noise
    set_name = start_run(spec, task_args, model_args, training)  # one output folder per run
    torch.manual_seed(training.seed)
    where = {"smoke": model_args.smoke, "seed": training.seed, "data_dir": data.data_dir}
    physics, physics_text = spec.build_physics(task_args, data.patch, **where)
    dataset, data_text = training_data(spec, task_args, data, smoke=model_args.smoke, seed=training.seed)
    model = build_model(spec, task_args, model_args, physics, set_name=set_name, seed=training.seed)
    sampler = spec.physics_sampler(task_args, data.patch, **where)  # what to redraw per batch
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
        summary = train_cassi(*parse_training_args(TASK, argv, description=__doc__))
    except (ValueError, FileNotFoundError) as error:
        print(f"train_cassi: error: {error}", file=sys.stderr)
        return 2
    if is_main_process():
        print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

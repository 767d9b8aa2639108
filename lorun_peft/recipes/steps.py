"""The reusable steps of a training recipe; ``examples/train_<task>.py`` call them in order.

A recipe is: parse the options (:func:`~lorun_peft.recipes.parse_training_args`), :func:`start_run`
(claims the output folder for this one run, checks Hub access), the task's physics
(``spec.build_physics``), :func:`training_data`, :func:`build_model` (phase 1 fresh or warm-started, or
phase 2 on a backbone), :func:`~lorun_peft.training.train` with :func:`evaluation_during_training` and
the task's ``physics_sampler``, then :func:`save_run`. Each step is one concern and knows a task only
through its :class:`~lorun_peft.tasks.TaskSpec`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorun_peft.io import read_json_object, write_atomic
from lorun_peft.tasks import TaskSpec, default_data_dir

from .arguments import ADAPTER_INITS, DataArguments, ModelArguments

__all__ = [
    "RUN_TARGET_FILE",
    "TrainingSummary",
    "build_model",
    "claim_output_dir",
    "evaluation_during_training",
    "freeze_adapters",
    "is_main_process",
    "report_split",
    "save_run",
    "start_run",
    "training_data",
]

#: Written at the start of a run into its output folder: which task, mode and adapter set it trains.
RUN_TARGET_FILE = "run_target.json"
_REUSE_ADVICE = "delete it or use another --output_dir"


@dataclass
class TrainingSummary:
    """What a training run did: written as ``run_summary.json`` in the output folder."""

    task: str
    mode: str
    output_dir: str
    saved: str
    physics: str
    data: str
    steps: int
    train_time_s: float
    wall_time_s: float
    final_loss: float | None
    stored_params: int
    trainable_params: int
    adapter_set_name: str | None = None
    eval: dict[str, float] | None = None
    stopped_early: bool = False

    def line(self) -> str:
        """The one line a script prints at the end."""
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4g}"
        return (
            f"{self.task} {self.mode}: {self.steps} steps in {self.train_time_s:.1f} s, final loss {loss}; "
            f"{self.stored_params:,} stored / {self.trainable_params:,} trainable parameters; "
            f"saved {self.saved}"
        )


def is_main_process() -> bool:
    """Rank 0 of a distributed run (or a single process): the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------- run folder
def claim_output_dir(output_dir: str | os.PathLike, target: dict[str, Any]) -> None:
    """Refuse an output folder that holds another run's state; else record ``target`` in it.

    ``log.jsonl``, ``run_summary.json`` and the checkpoints belong to one run: a second adapter set
    trained into the same folder would append to the first one's log and resume its checkpoint.
    """
    folder = Path(output_dir)
    previous = None
    has_state = any((folder / name).exists() for name in ("log.jsonl", "run_summary.json")) or any(
        folder.glob("checkpoint-*")
    )
    if has_state and (folder / RUN_TARGET_FILE).is_file():
        previous = read_json_object(folder / RUN_TARGET_FILE, _REUSE_ADVICE)
    elif (folder / "run_summary.json").is_file():  # a folder written before run_target.json existed
        summary = read_json_object(folder / "run_summary.json", _REUSE_ADVICE)
        previous = {
            "task": summary.get("task"),
            "mode": summary.get("mode"),
            "adapter_set": summary.get("adapter_set_name"),
        }
    if previous is not None and previous != target:

        def what(run: dict[str, Any]) -> str:
            set_text = f" of adapter set {run['adapter_set']!r}" if run.get("adapter_set") else ""
            return f"a {run.get('task')} --mode {run.get('mode')} run{set_text}"

        name = target.get("adapter_set") or target["mode"]
        hint = f"{folder}/{name}" if target.get("adapter_set") else f"{folder}-{name}"
        raise ValueError(
            f"--output_dir {folder} holds {what(previous)} (its log, checkpoints and summary); this is "
            f"{what(target)}: use one output folder per run, e.g. --output_dir {hint}"
        )
    if is_main_process():
        write_atomic(folder / RUN_TARGET_FILE, json.dumps(target, indent=2, sort_keys=True) + "\n")


def start_run(spec: TaskSpec, task_args: Any, model_args: ModelArguments, training: Any) -> str | None:
    """Check Hub access (a push that cannot start fails now), claim the output folder; the set's name.

    Returns the adapter-set name of a phase-2 run (``--adapter_set_name`` or the task mode's), else ``None``.
    """
    if model_args.push_to_hub:
        from lorun_peft.hub import check_push_access

        check_push_access(model_args.hub_model_id or Path(training.output_dir).resolve().name)
    set_name = None
    if model_args.mode == "lorun":
        set_name = model_args.adapter_set_name or spec.set_name(task_args)
    claim_output_dir(
        training.output_dir, {"task": spec.name, "mode": model_args.mode, "adapter_set": set_name}
    )
    return set_name


# ---------------------------------------------------------------------------------------------- data
def _data_files(path: Path) -> set[Path]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return {p.resolve() for p in files}


def _default_path(data: DataArguments, relative: str | None) -> Path | None:
    root = Path(data.data_dir) if data.data_dir else default_data_dir()
    if root is None or relative is None:
        return None
    path = root / relative
    return path if path.exists() else None


def report_split(spec: TaskSpec, data: DataArguments, train_path: Path | None, train_text: str) -> None:
    """Print which data trains and which evaluates; warn when a file is in both (optimistic scores)."""
    print(
        f"train_{spec.name}: training on {train_text}; evaluating on {data.eval_data or 'nothing'}",
        flush=True,
    )
    if not data.eval_data or train_path is None:
        return
    shared = sorted(p.name for p in _data_files(train_path) & _data_files(Path(data.eval_data)))
    if shared:
        print(
            f"WARNING: {len(shared)} evaluation file(s) are also training data ({', '.join(shared[:5])}): "
            "the scores will be optimistic; pass --train_data without them",
            file=sys.stderr,
            flush=True,
        )


def training_data(
    spec: TaskSpec, task_args: Any, data: DataArguments, *, smoke: bool = False, seed: int = 0
) -> tuple[Any, str]:
    """The training patches (a ``torch`` dataset) and where they come from; prints the train/eval split.

    ``--train_data``, else the task's default under the data root; ``--smoke`` without data uses the
    shipped sample images (synthetic cubes for CASSI).
    """
    path = Path(data.train_data) if data.train_data else _default_path(data, spec.train_data)
    if path is None:
        if not smoke:
            raise FileNotFoundError(
                f"no training data: {spec.train_data} not found under --data_dir or <repo>/../shared/data; "
                "pass --data_dir DIR or --train_data FOLDER (or --smoke to use the shipped sample images)"
            )
        dataset, text = spec.smoke_dataset(task_args, data, seed=seed)
    else:
        dataset, text = spec.train_dataset(path, task_args, data, seed=seed)
    if is_main_process():
        report_split(spec, data, path, text)
    return dataset, text


def evaluation_during_training(
    spec: TaskSpec, task_args: Any, data: DataArguments, *, smoke: bool = False
) -> Callable[[Any], dict[str, float]] | None:
    """``eval_fn`` for :func:`~lorun_peft.training.train` scoring ``--eval_data`` with the task's protocol."""
    if not data.eval_data:
        return None
    from lorun_peft.evaluation import evaluate_items

    items = spec.load_test_items(data.eval_data, task_args, max_items=data.max_eval_images)
    options = spec.evaluation_options(task_args, smoke=smoke, data_dir=data.data_dir)

    def eval_fn(model: Any) -> dict[str, float]:
        report = evaluate_items(model, spec.name, items, **options)
        return {"psnr": report.mean_psnr, "ssim": report.mean_ssim}

    return eval_fn


# ---------------------------------------------------------------------------------------------- model
def freeze_adapters(model: Any, adapter_names: list[str]) -> None:
    """Stop ``adapter_names``' LoRA factors from training (phase 2 then trains the task parameters only)."""
    from lorun_peft.tuners import StageLoRALayer

    for layer in model.modules():
        if isinstance(layer, StageLoRALayer):
            for name in adapter_names:
                if name in layer.lora_A:
                    layer.lora_A[name].requires_grad_(False)
                    layer.lora_B[name].requires_grad_(False)


def _phase2_model(
    spec: TaskSpec, task_args: Any, model_args: ModelArguments, physics: Any, set_name: str, seed: int
) -> Any:
    from lorun_peft.tuners import StageLoRAConfig
    from lorun_peft.unfolding import LoRunModel

    model = LoRunModel.from_pretrained(model_args.backbone).train()
    if model.config.mode != "shared":
        raise ValueError(
            f"--backbone {model_args.backbone} is a {model.config.mode!r} model; phase 2 needs a shared "
            "backbone (train it with --mode shared)"
        )
    if not spec.owns(model.config.physics):
        raise ValueError(
            f"--backbone {model_args.backbone} has physics {model.config.physics.get('type')!r}, not a "
            f"{spec.name!r} model"
        )
    if model_args.warm_start:
        return _warm_start_set(model, model_args, physics, set_name)
    keep = spec.start_phase2(physics, model.task.physics, task_args, model_args, seed)
    adapter_names = model.add_stage_adapters(
        set_name,
        StageLoRAConfig(
            num_stages=model.config.num_stages,
            gamma=model_args.gamma,
            init_lora_weights=ADAPTER_INITS[model_args.adapter_init],
        ),
        physics=None if keep else physics.to(model.dtype),
    )
    if not model_args.train_adapters:
        freeze_adapters(model, adapter_names)
    return model


def _warm_start_set(model: Any, model_args: ModelArguments, physics: Any, set_name: str) -> Any:
    """Phase 2 continued: the saved set ``--warm_start`` loaded trainable onto the backbone ``model``.

    The set must have been trained on this backbone (the loader checks its fingerprint) and carry this
    run's set name and physics config (a CS ratio, an SR scale, a mask size): a further leg of one set.
    """
    from lorun_peft.tuners import stage_adapter_name

    model.load_adapter(model_args.warm_start, set_name, trainable=True)
    _check_warm_start_physics(model_args.warm_start, model.physics, physics)
    if not model_args.train_adapters:
        freeze_adapters(model, [stage_adapter_name(set_name, k) for k in range(model.config.num_stages)])
    return model


def _warm_start_model(model_args: ModelArguments, physics: Any) -> Any:
    from lorun_peft.unfolding import LoRunModel

    model = LoRunModel.from_pretrained(model_args.warm_start).train()
    if model.config.mode != model_args.mode:
        raise ValueError(
            f"--warm_start {model_args.warm_start} is a {model.config.mode!r} model, but --mode is "
            f"{model_args.mode!r}"
        )
    _check_warm_start_physics(model_args.warm_start, model.task.physics, physics)
    return model


def _check_warm_start_physics(source: str, saved: Any, physics: Any) -> None:
    """Refuse a ``--warm_start`` model or set whose physics config differs from this run's."""
    if saved.get_config() != physics.get_config():
        raise ValueError(
            f"--warm_start {source} was trained with physics {saved.get_config()}, this run asks for "
            f"{physics.get_config()}: pass the same task options"
        )


def build_model(
    spec: TaskSpec,
    task_args: Any,
    model_args: ModelArguments,
    physics: Any,
    *,
    set_name: str | None,
    seed: int,
) -> Any:
    """The model this phase trains.

    ``--mode shared|block``: a fresh LoRunModel (denoiser family ``--denoiser``, the task's algorithm
    unless ``--algorithm``), or the saved one of ``--warm_start`` (checked to have this run's physics).
    ``--mode lorun``: ``--backbone`` with the K stage adapters of ``set_name`` added (gamma of eq. 12) and
    this run's physics (a new CS ratio, SR kernel, mask ...), or the backbone's when the task keeps it.
    """
    from lorun_peft.denoisers import build_denoiser
    from lorun_peft.unfolding import LoRunModel

    if model_args.mode == "lorun":
        return _phase2_model(spec, task_args, model_args, physics, set_name or spec.set_name(task_args), seed)
    if model_args.warm_start:
        return _warm_start_model(model_args, physics)
    denoiser = build_denoiser(
        model_args.denoiser,
        spec.channels(task_args),
        model_args.width,
        model_args.depth,
        noise_level_map=model_args.noise_level_map,
        identity_init=model_args.identity_init,
    )
    return LoRunModel.from_components(
        physics,
        denoiser,
        num_stages=model_args.num_stages,
        algorithm=model_args.algorithm or spec.algorithm,
        mode=model_args.mode,
        step_init=model_args.step_init,
    )


# ---------------------------------------------------------------------------------------------- result
def save_run(
    result: Any,
    spec: TaskSpec,
    model_args: ModelArguments,
    training: Any,
    *,
    set_name: str | None,
    physics_text: str,
    data_text: str,
    started: float,
) -> TrainingSummary:
    """Save the backbone (phase 1) or the adapter set (phase 2), push it if asked, write the summary."""
    model = result.model
    output_dir = Path(training.output_dir)
    report = model.parameter_report()
    summary = TrainingSummary(
        task=spec.name,
        mode=model_args.mode,
        output_dir=str(output_dir),
        saved=str(output_dir / set_name) if set_name else str(output_dir),
        physics=physics_text,
        data=data_text,
        steps=result.global_step,
        train_time_s=result.train_time_s,
        wall_time_s=0.0,
        final_loss=result.losses[-1] if result.losses else None,
        stored_params=report.total.stored,
        trainable_params=report.total.trainable,
        adapter_set_name=set_name,
        eval=result.eval_history[-1]["eval"] if result.eval_history else None,
        stopped_early=result.stopped_early,
    )
    if is_main_process():
        if set_name is None:
            model.save_pretrained(output_dir)
        else:
            model.save_adapter_set(output_dir, set_name)
        if model_args.push_to_hub:
            repo_id = model_args.hub_model_id or output_dir.resolve().name
            if set_name is None:
                model.push_to_hub(repo_id)
            else:
                model.push_adapter_set(repo_id, set_name)
        summary.wall_time_s = time.perf_counter() - started
        write_atomic(output_dir / "run_summary.json", json.dumps(asdict(summary), indent=2))
    return summary

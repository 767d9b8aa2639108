"""Setting up and tearing down one :func:`~lorun_peft.training.train` call.

:func:`_prepare_run` checks the inputs, creates the Accelerator and seeds every RNG;
:func:`_build_optimizer_and_schedule` builds Adam and the warm-up + cosine schedule and hands the model
to ``accelerator.prepare``; :func:`_resume` loads a checkpoint; :func:`_step_loader` and
:func:`_start_loop` set up what the loop in :mod:`~lorun_peft.training.loop` iterates and fills;
:func:`_finish` returns the unwrapped model as the caller gave it and ends the process group. The state
these steps share is one :class:`_Run`; what ``train`` returns is a :class:`TrainResult`.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import StepBatches, TrainSource, _model_dtype
from .checkpoint import (
    frozen_fingerprint,
    load_model_state,
    load_optimizer_state,
    load_rng_state,
    read_model_state,
    read_trainer_state,
)
from .config import UnfoldingTrainingConfig
from .precision import resolve_mixed_precision, set_channels_last
from .runtime import (
    _accelerator_available,
    _accelerator_type,
    _forget_other_precision,
    _prepare_checkpointing,
    _restore_checkpointing,
)
from .state import LOG_FILE, _resolve_resume, _truncate_log, _write_config


@dataclass
class TrainResult:
    """What :func:`~lorun_peft.training.train` returns.

    ``model`` is the unwrapped model (no DDP / autocast wrapper), trained in place. ``log_history`` holds the
    records written to ``log.jsonl`` by this call (``loss`` averaged over processes), ``eval_history`` the
    ``eval_fn`` results with their step. ``mean_step_time_s`` excludes the first (warm-up) step when possible.
    ``mixed_precision`` is what ran (``"auto"`` resolved to ``"bf16"`` or ``"no"``).
    """

    model: nn.Module
    global_step: int
    log_history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    last_checkpoint: Path | None = None
    resumed_from: Path | None = None
    train_time_s: float = 0.0
    mean_step_time_s: float | None = None
    peak_device_memory_bytes: int | None = None
    mixed_precision: str = "no"
    #: ``max_train_time_s`` ran out before ``max_steps`` (the schedule did not finish).
    stopped_early: bool = False

    @property
    def losses(self) -> list[float]:
        """Logged training losses in step order."""
        return [record["loss"] for record in self.log_history if "loss" in record]


def cosine_lr_lambda(step: int, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier at 0-based ``step``: linear warm-up to 1 over ``warmup_steps``, then cosine to
    ``min_lr_ratio`` (reached at ``step == max_steps``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class _Run:
    """The state the steps of one :func:`~lorun_peft.training.train` call share, filled in step order."""

    config: UnfoldingTrainingConfig
    model: nn.Module
    trainable: list[nn.Parameter]
    batches: StepBatches
    eval_fn: Callable[[nn.Module], dict[str, float]] | None
    physics_sampler: Callable[[nn.Module, torch.Generator], None] | None
    accelerator: Accelerator
    mixed_precision: str
    checkpointing_before: tuple[bool, bool] | None
    output_dir: Path
    # _build_optimizer_and_schedule
    fingerprint: str = ""
    was_training: bool = True
    prepared: Any = None  # the model as accelerate wraps it (DDP, autocast)
    optimizer: Any = None  # accelerate's AcceleratedOptimizer
    scheduler: Any = None  # accelerate's AcceleratedScheduler
    unwrapped: Any = None
    # _resume
    resumed_from: Path | None = None
    start_step: int = 0
    # _start_loop
    dtype: torch.dtype = torch.float32
    physics: Any = None
    result: TrainResult | None = None
    progress: Any = None
    step_times: list[float] = field(default_factory=list)
    run_start: float = 0.0
    tick: float = 0.0
    step_loss: Tensor | None = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def _check_inputs(model: nn.Module, config: UnfoldingTrainingConfig) -> list[nn.Parameter]:
    """Refuse a wrong config or model before anything is set up; returns the trainable parameters."""
    if not isinstance(config, UnfoldingTrainingConfig):
        raise ValueError(f"config must be an UnfoldingTrainingConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if getattr(model, "physics", None) is None or not hasattr(model.physics, "measure"):
        raise ValueError("model.physics must be an operator with measure(x, noise_sigma, generator)")
    trainable = [param for param in model.parameters() if param.requires_grad]
    if not trainable:
        raise ValueError(
            "the model has no parameter with requires_grad=True: nothing to train (phase 2 needs "
            "add_stage_adapters first; phase 1 needs an unfrozen denoiser)"
        )
    return trainable


def _prepare_run(
    model: nn.Module,
    train_source: TrainSource,
    config: UnfoldingTrainingConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None,
    physics_sampler: Callable[[nn.Module, torch.Generator], None] | None,
) -> _Run:
    """Check the inputs, create the Accelerator, seed every RNG and write ``training_config.json``."""
    trainable = _check_inputs(model, config)
    batches = StepBatches(train_source, config.batch_size, config.seed, 0, config.gradient_accumulation_steps)
    use_cpu = config.use_cpu or not _accelerator_available()
    mixed_precision = resolve_mixed_precision(
        config.mixed_precision, torch.device("cpu" if use_cpu else _accelerator_type())
    )
    checkpointing_before = _prepare_checkpointing(model, config)
    _forget_other_precision(mixed_precision)
    accelerator = Accelerator(
        cpu=use_cpu, mixed_precision=mixed_precision, step_scheduler_with_optimizer=False
    )
    batches.rank = accelerator.process_index
    set_seed(config.seed, device_specific=True)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_config(output_dir, config)
    accelerator.wait_for_everyone()
    return _Run(
        config=config,
        model=model,
        trainable=trainable,
        batches=batches,
        eval_fn=eval_fn,
        physics_sampler=physics_sampler,
        accelerator=accelerator,
        mixed_precision=mixed_precision,
        checkpointing_before=checkpointing_before,
        output_dir=output_dir,
    )


def parameter_groups(
    model: nn.Module, trainable: list[nn.Parameter], config: UnfoldingTrainingConfig
) -> list[dict[str, Any]]:
    """Adam's parameter groups: the model's ``step_parameters()`` at ``step_lr_multiplier`` x lr.

    One group when the multiplier is 1 or no step parameter trains. Why a multiplier: ``rho_k``/``mu_k``
    are K scalars whose good values can lie orders of magnitude from their start (0.5), and Adam moves a
    parameter by about lr per step whatever its gradient, so at the denoisers' lr they barely move in a
    few thousand steps (docs/training.md, "Step parameters").
    """
    if config.step_lr_multiplier == 1:
        return [{"params": trainable}]
    if not callable(getattr(model, "step_parameters", None)):
        raise ValueError(
            f"step_lr_multiplier={config.step_lr_multiplier} needs a model with step_parameters() (a "
            f"LoRunModel); {type(model).__name__} has none: leave step_lr_multiplier at 1"
        )
    step_ids = {id(param) for param in model.step_parameters()}
    steps = [p for p in trainable if id(p) in step_ids]
    rest = [p for p in trainable if id(p) not in step_ids]
    if not steps:
        return [{"params": trainable}]
    step_group = {"params": steps, "lr": config.learning_rate * config.step_lr_multiplier}
    return [{"params": rest}, step_group] if rest else [step_group]


def _build_optimizer_and_schedule(run: _Run) -> None:
    """Adam over the trainable parameters, the warm-up + cosine schedule, and ``accelerator.prepare``."""
    config, model = run.config, run.model
    run.fingerprint = frozen_fingerprint(model)
    optimizer = torch.optim.Adam(
        parameter_groups(model, run.trainable, config),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    scheduler = LambdaLR(
        optimizer,
        lambda step: cosine_lr_lambda(step, config.max_steps, config.warmup_steps, config.min_lr_ratio),
    )
    run.was_training = model.training
    model.train()
    if config.channels_last:
        set_channels_last(model)
    run.prepared, run.optimizer, run.scheduler = run.accelerator.prepare(model, optimizer, scheduler)
    run.unwrapped = run.accelerator.unwrap_model(run.prepared)


def _resume(run: _Run) -> None:
    """Load the checkpoint ``resume_from_checkpoint`` names (weights, optimizer, schedule, scaler, RNG) and
    cut ``log.jsonl`` back to its step; a fresh start empties the log."""
    config, accelerator, unwrapped = run.config, run.accelerator, run.unwrapped
    log_path = run.output_dir / LOG_FILE
    resumed_from = run.resumed_from = _resolve_resume(config)
    if resumed_from is not None:
        state = read_trainer_state(resumed_from)
        read_model_state(resumed_from, unwrapped)  # another set's checkpoint is named as such first
        if state["frozen_fingerprint"] != run.fingerprint:
            raise ValueError(
                f"checkpoint {resumed_from} was trained on different frozen parameters (backbone fingerprint "
                "mismatch): load the same phase-1 weights before resuming"
            )
        load_model_state(resumed_from, unwrapped)
        load_optimizer_state(resumed_from, run.optimizer.optimizer, unwrapped, state)
        scheduler = run.scheduler.scheduler
        scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        load_rng_state(resumed_from, accelerator.process_index, accelerator.device)
        run.start_step = int(state["step"])
        if run.is_main:
            print(f"resuming from {resumed_from} (step {run.start_step} of {config.max_steps})", flush=True)
        if run.start_step > config.max_steps:
            raise ValueError(
                f"checkpoint {resumed_from} is at step {run.start_step} > max_steps={config.max_steps}"
            )
        if run.is_main:
            _truncate_log(log_path, run.start_step)
    elif run.is_main:  # a fresh start in a used folder: the log begins again, not after a dead run's records
        _truncate_log(log_path, 0)
    accelerator.wait_for_everyone()


def _step_loader(run: _Run) -> DataLoader:
    """The micro-batches of the steps still to run, in order (item ``k``: step ``k // accumulation``)."""
    accumulation = run.config.gradient_accumulation_steps
    return DataLoader(
        run.batches,
        batch_size=None,
        sampler=range(run.start_step * accumulation, run.config.max_steps * accumulation),
        num_workers=run.config.dataloader_num_workers,
        generator=torch.Generator().manual_seed(run.config.seed),  # keeps the global RNG (dropout) untouched
    )


def _start_loop(run: _Run) -> None:
    """The result to fill, the progress bar, the memory counter and the clock."""
    config, device = run.config, run.accelerator.device
    run.dtype = _model_dtype(run.unwrapped)
    run.physics = run.unwrapped.physics
    run.result = TrainResult(
        model=run.unwrapped,
        global_step=run.start_step,
        output_dir=run.output_dir,
        resumed_from=run.resumed_from,
        mixed_precision=run.mixed_precision,
    )
    run.result.last_checkpoint = run.resumed_from
    run.progress = tqdm(
        total=config.max_steps,
        initial=run.start_step,
        disable=not (run.is_main and config.show_progress),
        desc="train",
        dynamic_ncols=True,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.step_times = []
    run.run_start = time.perf_counter()
    run.step_loss = torch.zeros((), device=device)
    run.tick = time.perf_counter()


def _finish(run: _Run, finalize: bool) -> TrainResult:
    """Timings, the unwrapped model back in its own mode and layout, and (``finalize``) the end of the
    process group."""
    accelerator, result, device = run.accelerator, run.result, run.accelerator.device
    run.progress.close()
    result.train_time_s = time.perf_counter() - run.run_start
    timed = run.step_times[1:] if len(run.step_times) > 1 else run.step_times
    result.mean_step_time_s = sum(timed) / len(timed) if timed else None
    if device.type == "cuda":
        result.peak_device_memory_bytes = torch.cuda.max_memory_allocated(device)
    accelerator.wait_for_everyone()
    result.model = accelerator.unwrap_model(run.prepared, keep_fp32_wrapper=False)
    result.model.train(run.was_training)
    if run.config.channels_last:  # saved weights and the caller's code see the default layout again
        set_channels_last(result.model, enabled=False)
    if run.checkpointing_before is not None:
        _restore_checkpointing(result.model, run.checkpointing_before)
    if finalize:
        accelerator.end_training()
        # Free the DDP wrapper before the group: its Reducer holds the process group, and if the
        # Reducer dropped the last reference the group's destructor would run with the GIL held and
        # can deadlock joining a gloo worker thread (seen once in a 2-process test).
        run.prepared = run.optimizer = run.scheduler = None
        accelerator.free_memory()
        gc.collect()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank has finished all of its collectives before any rank tears the group down
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return result

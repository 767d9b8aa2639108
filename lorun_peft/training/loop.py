"""The accelerate training loop shared by LoRun's two phases.

:func:`train` optimises whatever parameters of an unfolding model have ``requires_grad``: phase 1
(``shared`` or ``block`` mode: denoiser + task parameters) and phase 2 (``lorun`` mode after
``add_stage_adapters``: stage adapters + task parameters) run the same code. The whole unfolding module
(step sizes and a learnable Phi included) is passed to ``accelerator.prepare``, so under DDP every
trainable tensor is all-reduced. Clean patches come from ``train_source``; measurements are simulated on
the fly by ``model.physics.measure``. The batch and noise of step ``t`` on process ``rank`` are pure
functions of ``(seed, t, micro-batch, rank)`` (:mod:`~lorun_peft.training.batches`), which is what makes
resume exact without checkpointing any iterator position. Loss: mean squared error over all pixels of the
batch, i.e. the paper's eq. 13 divided by ``C * H * W`` (see docs/training.md).

:func:`train` reads as its steps: set-up and tear-down live in :mod:`~lorun_peft.training.run`; the
per-micro-batch and per-step functions (:func:`_accumulate`, :func:`_optimizer_step`, :func:`_end_step`,
:func:`_maybe_log`, :func:`_maybe_evaluate`, :func:`_maybe_checkpoint`) are here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from .batches import StepBatches, TrainSource, _images, _measure, derive_seed, reconstruction_loss
from .config import UnfoldingTrainingConfig
from .evaluate import evaluate_psnr
from .run import (
    TrainResult,
    _build_optimizer_and_schedule,
    _finish,
    _prepare_run,
    _resume,
    _Run,
    _start_loop,
    _step_loader,
    cosine_lr_lambda,
)
from .state import CONFIG_FILE, LOG_FILE, _append_jsonl, save_checkpoint

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "StepBatches",
    "TrainResult",
    "TrainSource",
    "cosine_lr_lambda",
    "derive_seed",
    "evaluate_psnr",
    "reconstruction_loss",
    "save_checkpoint",
    "train",
]


def train(
    model: nn.Module,
    train_source: TrainSource,
    config: UnfoldingTrainingConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    *,
    finalize: bool = True,
    physics_sampler: Callable[[nn.Module, torch.Generator], None] | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that have ``requires_grad`` (one phase) with Adam + cosine LR.

    Args:
        model: unfolding model: ``model(measurement).images`` is the ``(B, C, H, W)`` reconstruction and
            ``model.physics.measure(x, noise_sigma, generator)`` simulates measurements of clean ``x``.
        train_source: clean patches; see :data:`TrainSource`. Values in the range the model expects.
        config: the run's hyper-parameters.
        eval_fn: called on the main process with the unwrapped model in eval mode under ``torch.no_grad``
            every ``config.eval_every`` steps and at the end; returns a dict of float metrics.
        finalize: end the run with ``accelerator.end_training()`` and destroy the process group. Pass
            ``False`` for all but the last ``train`` call of a multi-process script (phase 1 before phase 2).
        physics_sampler: called as ``physics_sampler(model.physics, generator)`` before every micro-batch
            is measured, to redraw part of the operator (e.g. :class:`~lorun_peft.data.RandomMaskCrops`: a
            new CASSI mask crop). Its generator is seeded by ``(seed, step, micro-batch)`` and not by the
            rank, so all processes draw the same operator and resume stays exact.

    Returns:
        A :class:`TrainResult`. Checkpoints and ``log.jsonl`` are written in ``config.output_dir``.
    """
    run = _prepare_run(model, train_source, config, eval_fn, physics_sampler)
    _build_optimizer_and_schedule(run)
    _resume(run)
    loader = _step_loader(run)
    _start_loop(run)
    accumulation = config.gradient_accumulation_steps
    for index, clean in enumerate(loader, start=run.start_step * accumulation):
        step, micro = divmod(index, accumulation)
        _accumulate(run, clean, step, micro)
        if micro < accumulation - 1:
            continue
        lr, grad_norm = _optimizer_step(run)
        last = _end_step(run, done=step + 1)
        _maybe_log(run, last, lr, grad_norm)
        _maybe_evaluate(run, last)
        _maybe_checkpoint(run, last)
        run.tick = time.perf_counter()
        if last:
            break
    return _finish(run, finalize)


def _accumulate(run: _Run, clean: Tensor, step: int, micro: int) -> None:
    """Forward and backward of one micro-batch (gradients all-reduced only on the step's last one)."""
    config, accelerator = run.config, run.accelerator
    device, accumulation = accelerator.device, config.gradient_accumulation_steps
    clean = clean.to(device=device, dtype=run.dtype, non_blocking=True)
    noise = torch.Generator(device=device).manual_seed(
        derive_seed(config.seed, step, micro, accelerator.process_index, "noise")
    )
    if run.physics_sampler is not None:
        run.physics_sampler(
            run.physics, torch.Generator().manual_seed(derive_seed(config.seed, step, micro, 0, "physics"))
        )
    measurement = _measure(run.physics, clean, config, noise)
    sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(run.prepared)
    with sync:
        loss = reconstruction_loss(_images(run.prepared(measurement)), clean)
        accelerator.backward(loss / accumulation)
    run.step_loss += loss.detach()


def _optimizer_step(run: _Run) -> tuple[float, Tensor | None]:
    """Clip, step the optimizer and the schedule, clear the gradients; returns the step's lr and norm."""
    clip = run.config.clip_grad_norm
    grad_norm = run.accelerator.clip_grad_norm_(run.trainable, clip) if clip is not None else None
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr, grad_norm


def _end_step(run: _Run, done: int) -> bool:
    """Count step ``done``, time it and say whether it is the last (``max_steps`` or the time budget)."""
    config = run.config
    run.result.global_step = done
    now = time.perf_counter()
    run.step_times.append(now - run.tick)
    run.tick = now
    run.progress.update(1)
    last = done == config.max_steps or _out_of_time(run.accelerator, config, now - run.run_start)
    if last and done < config.max_steps:
        run.result.stopped_early = True
    return last


def _maybe_log(run: _Run, last: bool, lr: float, grad_norm: Tensor | None) -> None:
    """Every ``log_every`` steps and at the last: the loss averaged over micro-batches and processes."""
    done, accelerator = run.result.global_step, run.accelerator
    if done % run.config.log_every == 0 or last:
        mean_loss = accelerator.reduce(
            run.step_loss / run.config.gradient_accumulation_steps, reduction="mean"
        ).item()
        record = {"step": done, "loss": mean_loss, "lr": lr, "step_time_s": run.step_times[-1]}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        run.result.log_history.append(record)
        if run.is_main:
            _append_jsonl(run.output_dir / LOG_FILE, record)
            run.progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.3g}")
    run.step_loss.zero_()


def _maybe_evaluate(run: _Run, last: bool) -> None:
    """Every ``eval_every`` steps and at the last: ``eval_fn`` on the main process, in eval mode."""
    done, config, accelerator = run.result.global_step, run.config, run.accelerator
    if run.eval_fn is None or not ((config.eval_every and done % config.eval_every == 0) or last):
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.unwrapped.eval()
        with torch.no_grad():
            metrics = {key: float(value) for key, value in run.eval_fn(run.unwrapped).items()}
        run.unwrapped.train()
        record = {"step": done, "eval": metrics}
        run.result.eval_history.append(record)
        _append_jsonl(run.output_dir / LOG_FILE, record)
    accelerator.wait_for_everyone()


def _maybe_checkpoint(run: _Run, last: bool) -> None:
    """Every ``checkpoint_every`` steps and at the last (when checkpointing is on): ``checkpoint-<step>``."""
    done, config = run.result.global_step, run.config
    if config.checkpoint_every and (done % config.checkpoint_every == 0 or last):
        run.result.last_checkpoint = save_checkpoint(
            run.accelerator,
            run.unwrapped,
            run.optimizer.optimizer,
            run.scheduler.scheduler,
            done,
            config,
            run.fingerprint,
        )


def _out_of_time(accelerator: Accelerator, config: UnfoldingTrainingConfig, elapsed: float) -> bool:
    """Whether ``max_train_time_s`` has run out (decided on rank 0 and shared, so all ranks stop together)."""
    if config.max_train_time_s is None:
        return False
    flag = torch.tensor(float(elapsed > config.max_train_time_s), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

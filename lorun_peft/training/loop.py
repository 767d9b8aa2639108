"""The accelerate training loop shared by LoRun's two phases, and a PSNR evaluation helper.

:func:`train` optimises whatever parameters of an unfolding model have ``requires_grad``: phase 1
(``shared`` or ``block`` mode: denoiser + task parameters) and phase 2 (``lorun`` mode after
``add_stage_adapters``: stage adapters + task parameters) run the same code. The whole unfolding module
(step sizes and a learnable Phi included) is passed to ``accelerator.prepare``, so under DDP every
trainable tensor is all-reduced. Clean patches come from ``train_source``; measurements are simulated on
the fly by ``model.physics.measure``. The batch and noise of step ``t`` on process ``rank`` are pure
functions of ``(seed, t, micro-batch, rank)``, which is what makes resume exact without checkpointing any
iterator position. Loss: mean squared error over all pixels of the batch, i.e. the paper's eq. 13 divided
by ``C * H * W`` (see docs/training.md).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    frozen_fingerprint,
    latest_checkpoint,
    load_model_state,
    load_optimizer_state,
    load_rng_state,
    publish_checkpoint,
    read_model_state,
    read_trainer_state,
    rotate_checkpoints,
    save_rng_state,
    tmp_checkpoint_dir,
    write_checkpoint_files,
)
from .config import UnfoldingTrainingConfig
from .precision import resolve_mixed_precision, set_channels_last

LOG_FILE = "log.jsonl"
CONFIG_FILE = "training_config.json"

#: A training source: clean patches ``(N, C, H, W)``, a map-style dataset of ``(C, H, W)`` items (or dicts
#: with ``"pixel_values"``), or a function ``(batch_size, generator) -> (B, C, H, W)``.
TrainSource = Tensor | Sequence[Any] | Dataset | Callable[[int, torch.Generator], Tensor]


@dataclass
class TrainResult:
    """What :func:`train` returns.

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


def derive_seed(seed: int, step: int, micro: int, rank: int, stream: str) -> int:
    """A 63-bit seed that is a pure function of its arguments (sha256, stable across runs and platforms)."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def cosine_lr_lambda(step: int, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier at 0-based ``step``: linear warm-up to 1 over ``warmup_steps``, then cosine to
    ``min_lr_ratio`` (reached at ``step == max_steps``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _as_image_tensor(item: Any) -> Tensor:
    if isinstance(item, dict):
        if "pixel_values" not in item:
            raise ValueError(
                f"dataset items that are dicts need a 'pixel_values' key, got keys {sorted(item)}"
            )
        item = item["pixel_values"]
    elif isinstance(item, tuple | list):
        item = item[0]
    if not isinstance(item, Tensor) or item.ndim != 3:
        raise ValueError(
            f"each training item must be a (C, H, W) tensor, got {type(item).__name__} "
            f"{tuple(item.shape) if isinstance(item, Tensor) else ''}"
        )
    return item


class StepBatches(Dataset):
    """Map-style dataset whose item ``k`` is micro-batch ``k % accumulation`` of step ``k // accumulation``.

    The patch indices (or the source function's generator) are seeded with
    :func:`derive_seed` ``(seed, step, micro, rank, "batch")``, so any step's batch can be produced again
    without replaying the ones before it. A dataset with ``set_epoch`` (e.g. ``RandomPatchDataset``, whose
    item ``i`` is a pure function of ``(seed, epoch, i)``) is set to ``epoch = step`` first, so every step
    sees fresh crops and stays reproducible.
    """

    def __init__(self, source: TrainSource, batch_size: int, seed: int, rank: int, accumulation: int) -> None:
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.accumulation = accumulation
        if isinstance(source, Tensor):
            if source.ndim != 4 or source.shape[0] == 0:
                raise ValueError(
                    f"a tensor train_source must be (N, C, H, W) with N >= 1, got {tuple(source.shape)}"
                )
            self.kind = "tensor"
        elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
            if len(source) == 0:
                raise ValueError("train_source is an empty dataset")
            self.kind = "dataset"
        elif callable(source):
            self.kind = "function"
        else:
            raise ValueError(
                "train_source must be a (N, C, H, W) tensor, a map-style dataset (len + getitem) or a "
                f"function (batch_size, generator) -> (B, C, H, W); got {type(source).__name__}"
            )

    def __getitem__(self, index: int) -> Tensor:
        step, micro = divmod(index, self.accumulation)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, step, micro, self.rank, "batch"))
        if self.kind == "tensor":
            picks = torch.randint(len(self.source), (self.batch_size,), generator=generator)
            return self.source[picks].clone()
        if self.kind == "function":
            batch = self.source(self.batch_size, generator)
            if not isinstance(batch, Tensor) or batch.ndim != 4 or batch.shape[0] != self.batch_size:
                raise ValueError(
                    f"the train_source function must return a ({self.batch_size}, C, H, W) tensor, got "
                    f"{tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__}"
                )
            return batch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(step)
        picks = torch.randint(len(self.source), (self.batch_size,), generator=generator).tolist()
        return torch.stack([_as_image_tensor(self.source[i]) for i in picks])


def _accelerator_available() -> bool:
    """Whether a GPU-like device exists; without one accelerate needs ``cpu=True`` to form gloo groups."""
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (xpu is not None and xpu.is_available())
    )


def _model_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.get_default_dtype()


def _images(output: Any) -> Tensor:
    images = getattr(output, "images", None)
    if images is None and isinstance(output, dict):
        images = output.get("images")
    if not isinstance(images, Tensor):
        raise ValueError(
            f"the model's forward must return an object with an `.images` tensor, got {type(output)}"
        )
    return images


def reconstruction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Training loss: MSE over every pixel of the batch, computed in float32 (eq. 13 / (C*H*W))."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"model output {tuple(prediction.shape)} does not match the target {tuple(target.shape)}"
        )
    return F.mse_loss(prediction.float(), target.float())


def _resolve_resume(config: UnfoldingTrainingConfig) -> Path | None:
    value = config.resume_from_checkpoint
    if value is None:
        return None
    if value == "latest":
        return latest_checkpoint(config.output_dir)
    path = Path(value)
    if not path.is_dir() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint={value!r} is not a complete checkpoint folder (expected a "
            f"checkpoint-<step> directory holding {STATE_FILE}); use 'latest' to pick the newest one"
        )
    return path


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        kept = [line for line in handle if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
    os.replace(tmp, path)


def _write_config(output_dir: Path, config: UnfoldingTrainingConfig) -> None:
    tmp = output_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.to_json_string(), encoding="utf-8")
    os.replace(tmp, output_dir / CONFIG_FILE)


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
    rank, device, is_main = accelerator.process_index, accelerator.device, accelerator.is_main_process
    batches.rank = rank
    set_seed(config.seed, device_specific=True)
    output_dir = Path(config.output_dir)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_config(output_dir, config)
    accelerator.wait_for_everyone()

    fingerprint = frozen_fingerprint(model)
    optimizer = torch.optim.Adam(
        trainable,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    scheduler = LambdaLR(
        optimizer,
        lambda step: cosine_lr_lambda(step, config.max_steps, config.warmup_steps, config.min_lr_ratio),
    )
    was_training = model.training
    model.train()
    if config.channels_last:
        set_channels_last(model)
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(prepared)

    resumed_from = _resolve_resume(config)
    start_step = 0
    if resumed_from is not None:
        state = read_trainer_state(resumed_from)
        read_model_state(resumed_from, unwrapped)  # another set's checkpoint is named as such first
        if state["frozen_fingerprint"] != fingerprint:
            raise ValueError(
                f"checkpoint {resumed_from} was trained on different frozen parameters (backbone fingerprint "
                "mismatch): load the same phase-1 weights before resuming"
            )
        load_model_state(resumed_from, unwrapped)
        load_optimizer_state(resumed_from, optimizer.optimizer, unwrapped, state)
        scheduler.scheduler.load_state_dict({**scheduler.scheduler.state_dict(), **state["scheduler"]})
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        load_rng_state(resumed_from, rank, device)
        start_step = int(state["step"])
        if is_main:
            print(f"resuming from {resumed_from} (step {start_step} of {config.max_steps})", flush=True)
        if start_step > config.max_steps:
            raise ValueError(
                f"checkpoint {resumed_from} is at step {start_step} > max_steps={config.max_steps}"
            )
        if is_main:
            _truncate_log(output_dir / LOG_FILE, start_step)
    elif is_main:  # a fresh start in a used folder: the log begins again, not after a dead run's records
        _truncate_log(output_dir / LOG_FILE, 0)
    accelerator.wait_for_everyone()

    accumulation = config.gradient_accumulation_steps
    loader = DataLoader(
        batches,
        batch_size=None,
        sampler=range(start_step * accumulation, config.max_steps * accumulation),
        num_workers=config.dataloader_num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG (dropout) untouched
    )
    dtype = _model_dtype(unwrapped)
    physics = unwrapped.physics
    clip = config.clip_grad_norm
    result = TrainResult(
        model=unwrapped,
        global_step=start_step,
        output_dir=output_dir,
        resumed_from=resumed_from,
        mixed_precision=mixed_precision,
    )
    result.last_checkpoint = resumed_from
    progress = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not (is_main and config.show_progress),
        desc="train",
        dynamic_ncols=True,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times: list[float] = []
    run_start = time.perf_counter()
    step_loss = torch.zeros((), device=device)
    tick = time.perf_counter()
    for index, clean in enumerate(loader, start=start_step * accumulation):
        step, micro = divmod(index, accumulation)
        clean = clean.to(device=device, dtype=dtype, non_blocking=True)
        noise = torch.Generator(device=device).manual_seed(
            derive_seed(config.seed, step, micro, rank, "noise")
        )
        if physics_sampler is not None:
            physics_sampler(
                physics, torch.Generator().manual_seed(derive_seed(config.seed, step, micro, 0, "physics"))
            )
        measurement = _measure(physics, clean, config, noise)
        if micro < accumulation - 1:
            with accelerator.no_sync(prepared):
                loss = reconstruction_loss(_images(prepared(measurement)), clean)
                accelerator.backward(loss / accumulation)
            step_loss += loss.detach()
            continue
        loss = reconstruction_loss(_images(prepared(measurement)), clean)
        accelerator.backward(loss / accumulation)
        step_loss += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(trainable, clip) if clip is not None else None
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        result.global_step = done
        now = time.perf_counter()
        step_times.append(now - tick)
        tick = now
        progress.update(1)
        last = done == config.max_steps or _out_of_time(accelerator, config, now - run_start)
        if last and done < config.max_steps:
            result.stopped_early = True

        if done % config.log_every == 0 or last:
            mean_loss = accelerator.reduce(step_loss / accumulation, reduction="mean").item()
            record = {"step": done, "loss": mean_loss, "lr": lr, "step_time_s": step_times[-1]}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            result.log_history.append(record)
            if is_main:
                _append_jsonl(output_dir / LOG_FILE, record)
                progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.3g}")
        step_loss.zero_()

        if eval_fn is not None and ((config.eval_every and done % config.eval_every == 0) or last):
            _run_eval(accelerator, unwrapped, eval_fn, done, result, output_dir)
        if config.checkpoint_every and (done % config.checkpoint_every == 0 or last):
            result.last_checkpoint = save_checkpoint(
                accelerator, unwrapped, optimizer.optimizer, scheduler.scheduler, done, config, fingerprint
            )
        tick = time.perf_counter()
        if last:
            break
    progress.close()

    result.train_time_s = time.perf_counter() - run_start
    timed = step_times[1:] if len(step_times) > 1 else step_times
    result.mean_step_time_s = sum(timed) / len(timed) if timed else None
    if device.type == "cuda":
        result.peak_device_memory_bytes = torch.cuda.max_memory_allocated(device)
    accelerator.wait_for_everyone()
    result.model = accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    result.model.train(was_training)
    if config.channels_last:  # saved weights and the caller's code see the default layout again
        set_channels_last(result.model, enabled=False)
    if checkpointing_before is not None:
        _restore_checkpointing(result.model, checkpointing_before)
    if finalize:
        accelerator.end_training()
        # Free the DDP wrapper before the group: its Reducer holds the process group, and if the
        # Reducer dropped the last reference the group's destructor would run with the GIL held and
        # can deadlock joining a gloo worker thread (seen once in a 2-process test).
        del prepared, optimizer, scheduler
        accelerator.free_memory()
        gc.collect()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank has finished all of its collectives before any rank tears the group down
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return result


def _out_of_time(accelerator: Accelerator, config: UnfoldingTrainingConfig, elapsed: float) -> bool:
    """Whether ``max_train_time_s`` has run out (decided on rank 0 and shared, so all ranks stop together)."""
    if config.max_train_time_s is None:
        return False
    flag = torch.tensor(float(elapsed > config.max_train_time_s), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _measure(
    physics: Any, clean: Tensor, config: UnfoldingTrainingConfig, generator: torch.Generator
) -> Tensor:
    """Simulated measurement of a batch: one noise std, or one per sample drawn in the configured range."""
    if config.noise_sigma_max is None:
        return physics.measure(clean, config.noise_sigma, generator)
    low, high = config.noise_sigma, config.noise_sigma_max
    y = physics.measure(clean, 0.0, generator)
    sigma = low + (high - low) * torch.rand(y.shape[0], generator=generator, device=y.device, dtype=y.dtype)
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return y + sigma.view(-1, *([1] * (y.ndim - 1))) * noise


def _forget_other_precision(mixed_precision: str) -> None:
    """Let a second ``train`` call in one process run another precision (phase 1 bf16, then fp32).

    accelerate keeps its state in a process-wide singleton and refuses a new ``Accelerator`` whose
    ``mixed_precision`` differs from the first one's; the process state (ranks, process group) is
    kept, only the precision record is dropped.
    """
    from accelerate.state import AcceleratorState

    recorded = AcceleratorState._shared_state.get("_mixed_precision")
    if recorded is not None and str(recorded) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _accelerator_type() -> str:
    """The device type accelerate picks when :func:`_accelerator_available`."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "xpu"


def _prepare_checkpointing(model: nn.Module, config: UnfoldingTrainingConfig) -> tuple[bool, bool] | None:
    """Switch on the config's gradient checkpointing; returns the model's previous state (None: untouched)."""
    if not config.gradient_checkpointing:
        return None
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"gradient_checkpointing=True needs a model that recomputes its stages (a LoRunModel); "
            f"{type(model).__name__} cannot"
        )
    before = (bool(getattr(model, "gradient_checkpointing", False)), model.checkpoints_denoiser)
    enable(denoiser=config.gradient_checkpointing_denoiser)
    return before


def _restore_checkpointing(model: nn.Module, before: tuple[bool, bool]) -> None:
    enabled, denoiser = before
    model.gradient_checkpointing_disable()
    if enabled:
        model.gradient_checkpointing_enable(denoiser=denoiser)


def _run_eval(
    accelerator: Accelerator,
    model: nn.Module,
    eval_fn: Callable[[nn.Module], dict[str, float]],
    step: int,
    result: TrainResult,
    output_dir: Path,
) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.eval()
        with torch.no_grad():
            metrics = {key: float(value) for key, value in eval_fn(model).items()}
        model.train()
        record = {"step": step, "eval": metrics}
        result.eval_history.append(record)
        _append_jsonl(output_dir / LOG_FILE, record)
    accelerator.wait_for_everyone()


def save_checkpoint(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    config: UnfoldingTrainingConfig,
    fingerprint: str,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (all ranks call this; the main process writes the shared files).

    Every rank writes its RNG state into the temp folder; the main process writes the rest, renames the
    folder into place and drops old checkpoints beyond ``config.save_total_limit``.
    """
    output_dir = Path(config.output_dir)
    tmp = tmp_checkpoint_dir(output_dir, step)
    final = checkpoint_dir(output_dir, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_rng_state(tmp, accelerator.process_index, accelerator.device)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_checkpoint_files(
            tmp,
            model,
            optimizer,
            scheduler,
            step,
            scaler=accelerator.scaler,
            fingerprint=fingerprint,
            extra={"num_processes": accelerator.num_processes, "config": config.to_dict()},
        )
        publish_checkpoint(tmp, final)
        rotate_checkpoints(output_dir, config.save_total_limit)
    accelerator.wait_for_everyone()
    return final


def evaluate_psnr(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    *,
    noise_sigma: float = 0.0,
    seed: int = 0,
    data_range: float = 1.0,
    compute_ssim: bool = False,
    protocol: str = "plain",
) -> dict[str, float]:
    """Mean PSNR (and SSIM) of ``model`` on clean ``images`` measured by ``model.physics``.

    ``images``: ``(N, C, H, W)`` or a list of ``(C, H, W)`` tensors (sizes may differ) in ``[0, data_range]``.
    Each image is measured with noise seeded by ``(seed, index)``, reconstructed alone, cropped to the
    image's ``(H, W)`` (block CS pads bottom/right) and scored against the clean image with
    :mod:`lorun_peft.metrics`. ``protocol="plain"``: :func:`~lorun_peft.metrics.psnr` /
    :func:`~lorun_peft.metrics.ssim` (Gaussian window) on ``[0, data_range]`` after clamping;
    ``protocol="cs"``: the ISTA-Net CS protocol, :func:`~lorun_peft.metrics.cs_psnr` /
    :func:`~lorun_peft.metrics.cs_ssim` (gray, [0, 255], 7x7 uniform window; ``data_range`` must be 1).
    """
    from lorun_peft import metrics

    if protocol not in ("plain", "cs"):
        raise ValueError(f"protocol must be 'plain' or 'cs', got {protocol!r}")
    if protocol == "cs" and data_range != 1.0:
        raise ValueError(
            f"protocol='cs' expects images in [0, 1] (data_range=1.0), got data_range={data_range}"
        )
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) or a list of (C, H, W), got {tuple(images.shape)}")
        images = list(images)
    if len(images) == 0:
        raise ValueError("evaluate_psnr needs at least one image")
    if protocol == "cs":
        psnr_fn, ssim_fn = metrics.cs_psnr, metrics.cs_ssim
    else:
        psnr_fn = functools.partial(metrics.psnr, data_range=data_range)
        ssim_fn = functools.partial(metrics.ssim, data_range=data_range)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    psnrs, ssims = [], []
    with torch.no_grad():
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3:
                raise ValueError(f"image {index} must be a (C, H, W) tensor")
            clean = image.to(device=device, dtype=dtype).unsqueeze(0)
            noise = torch.Generator(device=device).manual_seed(derive_seed(seed, 0, 0, index, "eval"))
            restored = _images(model(model.physics.measure(clean, noise_sigma, noise)))
            restored = restored[..., : clean.shape[-2], : clean.shape[-1]].clamp(0, data_range)
            psnrs.append(float(psnr_fn(restored, clean)))
            if compute_ssim:
                ssims.append(float(ssim_fn(restored, clean)))
    model.train(was_training)
    out = {"psnr": sum(psnrs) / len(psnrs)}
    if compute_ssim:
        out["ssim"] = sum(ssims) / len(ssims)
    return out

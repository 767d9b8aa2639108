"""What a run keeps in its ``output_dir`` besides the checkpoint files themselves.

``training_config.json`` (the run's config), ``log.jsonl`` (one JSON record per logged step or
evaluation, cut back to the resumed step on resume), which checkpoint ``resume_from_checkpoint`` names,
and :func:`save_checkpoint`, the multi-process protocol that writes one ``checkpoint-<step>`` folder
with :mod:`~lorun_peft.training.checkpoint`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from lorun_peft.io import write_atomic

from .checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    latest_checkpoint,
    publish_checkpoint,
    rotate_checkpoints,
    save_rng_state,
    tmp_checkpoint_dir,
    write_checkpoint_files,
)
from .config import UnfoldingTrainingConfig

LOG_FILE = "log.jsonl"
CONFIG_FILE = "training_config.json"


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
    write_atomic(path, "".join(kept))


def _write_config(output_dir: Path, config: UnfoldingTrainingConfig) -> None:
    write_atomic(output_dir / CONFIG_FILE, config.to_json_string())


def save_checkpoint(
    accelerator: Accelerator,
    model: torch.nn.Module,
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

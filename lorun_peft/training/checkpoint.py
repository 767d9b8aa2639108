"""Atomic, pickle-free training checkpoints (safetensors + JSON) for exact resume.

A checkpoint is a folder ``checkpoint-<step>`` in the run's output_dir::

    model.safetensors          trainable parameters + persistent buffers (names from named_parameters)
    optimizer.safetensors      per-parameter optimizer state, keys "state/<param name>/<key>"
    rng_state_<rank>.safetensors   torch / CUDA / numpy RNG of each process (python RNG in its metadata)
    trainer_state.json         step, scheduler and grad-scaler state, optimizer param groups (by name),
                               fingerprint of the frozen parameters, run config

It is written into ``.tmp-checkpoint-<step>`` and renamed with ``os.replace`` only when complete, so a
folder named ``checkpoint-*`` is always whole; ``trainer_state.json`` is written last and marks it valid.
Frozen parameters (the phase-1 backbone during phase 2) are not stored: the caller rebuilds the model;
their sha256 fingerprint is checked on resume so a checkpoint never resumes onto another backbone.
Nothing is pickled (no ``torch.save``, hence no ``accelerate.save_state``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lorun_peft.io import write_atomic

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
TRASH_PREFIX = ".trash-" + CHECKPOINT_PREFIX
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def rng_file(rank: int) -> str:
    """File name of process ``rank``'s RNG state inside a checkpoint."""
    return f"rng_state_{rank}.safetensors"


def checkpoint_dir(output_dir: str | os.PathLike[str], step: int) -> Path:
    """``output_dir/checkpoint-<step>``."""
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def tmp_checkpoint_dir(output_dir: str | os.PathLike[str], step: int) -> Path:
    """The hidden folder a checkpoint is assembled in before its atomic rename."""
    return Path(output_dir) / f"{TMP_PREFIX}{step}"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temp and trash folders are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or ``None``."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad`` (the ones a checkpoint stores)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def frozen_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the frozen parameters (hex)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad:
            continue
        tensor = param.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """CPU copies of the trainable parameters and the persistent buffers, keyed by state-dict name."""
    current = model.state_dict()
    return {
        name: current[name].detach().to("cpu", copy=True).contiguous()
        for name in trainable_state_dict_names(model)
    }


def _optimizer_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[str]]:
    names_by_id = {id(param): name for name, param in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        names = []
        for param in group["params"]:
            if id(param) not in names_by_id:
                raise ValueError("the optimizer holds a parameter that is not a parameter of the model")
            names.append(names_by_id[id(param)])
        groups.append(names)
    return groups


def _json_ready(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple | list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    return value


def _rng_tensors(device: torch.device) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    metadata = {
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
        "python": json.dumps(_json_ready(random.getstate())),
    }
    return tensors, metadata


def save_rng_state(directory: Path, rank: int, device: torch.device) -> None:
    """Write this process's RNG states into ``directory`` (every rank calls this)."""
    tensors, metadata = _rng_tensors(device)
    save_file(tensors, str(directory / rng_file(rank)), metadata=metadata)


def load_rng_state(directory: Path, rank: int, device: torch.device) -> bool:
    """Restore this process's RNG states; ``False`` (with a warning) when the file for ``rank`` is absent."""
    path = directory / rng_file(rank)
    if not path.is_file():
        warnings.warn(
            f"{path} not found (run resumed with more processes?): RNG state not restored", stacklevel=2
        )
        return False
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    kind, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))
    return True


def write_checkpoint_files(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    *,
    scaler: Any = None,
    fingerprint: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write model, optimizer and trainer state into ``directory`` (main process; RNG files are per rank).

    ``trainer_state.json`` is written last: its presence marks the folder complete.
    """
    save_file(trainable_state_dict(model), str(directory / MODEL_FILE), metadata={"format": "pt"})
    group_names = _optimizer_names(optimizer, model)
    state = optimizer.state_dict()
    flat_index = [name for names in group_names for name in names]
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        name = flat_index[index]
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"state/{name}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(name, {})[key] = _json_ready(value)
    save_file(tensors, str(directory / OPTIMIZER_FILE), metadata={"format": "pt"})
    groups = []
    for group, names in zip(state["param_groups"], group_names):
        hyper = {key: _json_ready(value) for key, value in group.items() if key != "params"}
        groups.append({"params": names, "hyper": hyper})
    scheduler_state = {k: _json_ready(v) for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    trainer_state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "optimizer_param_groups": groups,
        "optimizer_scalars": scalars,
        "scheduler": scheduler_state,
        "scaler": _json_ready(scaler.state_dict()) if scaler is not None else None,
        "frozen_fingerprint": fingerprint,
        **(extra or {}),
    }
    _write_json(directory / STATE_FILE, trainer_state)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically and flush it to disk before the folder can be published."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True))
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish_checkpoint(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically rename a complete temp folder to its final ``checkpoint-<step>`` name.

    Not :func:`lorun_peft.io.replace_folder`: the old folder goes aside under a fixed
    ``.trash-checkpoint-<step>`` name that :func:`list_checkpoints` skips and rotation reuses, so a crash
    between the two renames leaves a folder the next run recognises and clears.
    """
    if not (tmp_dir / STATE_FILE).is_file():
        raise FileNotFoundError(f"{tmp_dir} is incomplete (no {STATE_FILE}); refusing to publish it")
    if final_dir.exists():
        trash = final_dir.with_name(TRASH_PREFIX + final_dir.name[len(CHECKPOINT_PREFIX) :])
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def rotate_checkpoints(output_dir: str | os.PathLike[str], keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (renamed away first, so none is seen half-deleted)."""
    checkpoints = list_checkpoints(output_dir)
    if keep is None or len(checkpoints) <= keep:
        return []
    removed = checkpoints[: len(checkpoints) - keep]
    for path in removed:
        trash = path.with_name(TRASH_PREFIX + path.name[len(CHECKPOINT_PREFIX) :])
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return removed


def read_trainer_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON part of a checkpoint; raises ``FileNotFoundError`` if ``directory`` is not a checkpoint."""
    directory = Path(directory)
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a complete checkpoint: expected a folder holding {STATE_FILE}, "
            f"{MODEL_FILE} and {OPTIMIZER_FILE}"
        )
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} lacks {name}")
    with open(state_path, encoding="utf-8") as handle:
        state = json.load(handle)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{state_path}: unsupported checkpoint format {state.get('format')!r}")
    return state


def _describe(names: Sequence[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _set_names(names: set[str]) -> list[str]:
    """Adapter set names in parameter names (``...lora_A.<set>/stage_03.weight`` -> ``<set>``)."""
    parts = (part for name in names for part in name.split("."))
    return sorted({part.split("/stage_")[0] for part in parts if "/stage_" in part})


def read_model_state(directory: str | os.PathLike[str], model: nn.Module) -> dict[str, Tensor]:
    """A checkpoint's trainable parameters and buffers, checked against ``model``; nothing is changed.

    Raises ``ValueError`` when names, shapes or dtypes differ from what the model would save now; when
    the names differ because the checkpoint trained other adapter sets, the message names them.
    """
    directory = Path(directory)
    loaded = load_file(str(directory / MODEL_FILE))
    current = model.state_dict()
    expected = set(trainable_state_dict_names(model))
    missing, unexpected = expected - set(loaded), set(loaded) - expected
    if missing or unexpected:
        theirs, ours = _set_names(set(loaded)), _set_names(expected)
        if theirs != ours:
            theirs_text = ", ".join(theirs) or "none (phase 1)"
            ours_text = ", ".join(ours) or "none (phase 1)"
            raise ValueError(
                f"checkpoint {directory} trained adapter set(s) {theirs_text}, this run trains {ours_text}: "
                "it is another run's checkpoint; give each set its own output_dir"
            )
        raise ValueError(
            f"checkpoint {directory} does not match the model's trainable parameters/buffers: "
            f"missing {_describe(missing) or 'none'}; unexpected {_describe(unexpected) or 'none'}. "
            "Rebuild the model exactly as in the interrupted run (same mode, adapters, requires_grad)."
        )
    for name, tensor in loaded.items():
        target = current[name]
        if target.shape != tensor.shape or target.dtype != tensor.dtype:
            raise ValueError(
                f"checkpoint {directory}: {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the model expects {tuple(target.shape)} {target.dtype}"
            )
    return loaded


def load_model_state(directory: str | os.PathLike[str], model: nn.Module) -> None:
    """Copy a checkpoint's trainable parameters and buffers into ``model``, all or nothing."""
    loaded = read_model_state(directory, model)
    current = model.state_dict()
    with torch.no_grad():
        for name, tensor in loaded.items():
            current[name].copy_(tensor)


def trainable_state_dict_names(model: nn.Module) -> list[str]:
    """State-dict names a checkpoint stores for ``model``: trainable parameters and persistent buffers."""
    param_names = {name for name, _ in model.named_parameters()}
    trainable = set(trainable_parameter_names(model))
    return [name for name in model.state_dict() if name in trainable or name not in param_names]


def load_optimizer_state(
    directory: str | os.PathLike[str],
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    state: dict[str, Any],
) -> None:
    """Rebuild the optimizer's ``state_dict`` from names and load it (raises ``ValueError`` on mismatch)."""
    directory = Path(directory)
    group_names = _optimizer_names(optimizer, model)
    saved_groups = state["optimizer_param_groups"]
    if [g["params"] for g in saved_groups] != group_names:
        raise ValueError(
            f"checkpoint {directory}: the optimizer's parameters differ from the saved ones "
            f"(saved {sum(len(g['params']) for g in saved_groups)} in {len(saved_groups)} group(s), "
            f"now {sum(map(len, group_names))} in {len(group_names)}); rebuild the model as in the saved run"
        )
    tensors = load_file(str(directory / OPTIMIZER_FILE))
    index = {name: i for i, name in enumerate(name for names in group_names for name in names)}
    per_param: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, name, field_name = _split_state_key(key)
        per_param.setdefault(index[name], {})[field_name] = tensor
    for name, values in state.get("optimizer_scalars", {}).items():
        per_param.setdefault(index[name], {}).update(values)
    param_groups = []
    start = 0
    for saved in saved_groups:
        count = len(saved["params"])
        param_groups.append({**saved["hyper"], "params": list(range(start, start + count))})
        start += count
    for group in param_groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": per_param, "param_groups": param_groups})


def _split_state_key(key: str) -> tuple[str, str, str]:
    prefix, rest = key.split("/", 1)
    name, field_name = rest.rsplit("/", 1)
    return prefix, name, field_name

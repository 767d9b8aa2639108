"""Adapter sets on disk: saving, validating and loading K stage adapters (+ task parameters).

A set (injected, switched and removed by :mod:`lorun_peft.tuners.injection`) is saved as a folder::

    <dir>/<set_name>/
      adapter_set.json        name, K, gamma, conv_layout, metadata, base fingerprint, task keys, sha256
      stage_00/adapter_config.json, adapter_model.safetensors   (PEFT format, plain-PEFT loadable)
      ...
      task.safetensors        non-LoRA task parameters (Phi, rho/lambda/mu per stage, ...)

Saving is atomic (a temp folder next to the target, then :func:`lorun_peft.io.replace_folder`). Loading
validates everything first (fingerprint of the base weights, K, every stage folder, every tensor's name and
shape, the recorded checksums) and only then touches the model; an unexpected failure while injecting is
rolled back, so the model is either fully loaded or exactly as before. The injection names
(:func:`add_stage_adapters`, :func:`set_adapter_set`, ...) are importable from here too.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lorun_peft.integrity import SET_CHECKSUM_KEY, record_checksums, verify_checksums
from lorun_peft.io import replace_folder, write_atomic

from .config import StageLoRAConfig
from .fingerprint import base_fingerprint
from .injection import (
    MAX_SET_NAME_LENGTH,
    PEFT_PREFIX,
    AdapterSetError,
    LoadedAdapterSet,
    _add_set,
    _check_not_merged,
    _check_num_stages,
    _loaded,
    add_stage_adapters,
    delete_adapter_set,
    list_adapter_sets,
    set_adapter_set,
    stage_adapter_name,
    validate_set_name,
)
from .layers import StageLoRALayer, factor_shapes
from .stage import STATE_ATTR, StageLoRAState, find_state_holder, get_state

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "MAX_SET_NAME_LENGTH",
    "PEFT_PREFIX",
    "SET_FILE",
    "TASK_FILE",
    "WEIGHTS_FILE",
    "AdapterSetError",
    "LoadedAdapterSet",
    "add_stage_adapters",
    "base_fingerprint",
    "delete_adapter_set",
    "list_adapter_sets",
    "load_adapter_set",
    "record_set_checksums",
    "save_adapter_set",
    "set_adapter_set",
    "stage_adapter_name",
    "validate_set_name",
]

FORMAT_VERSION = 1
SET_FILE = "adapter_set.json"
TASK_FILE = "task.safetensors"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def _stage_dir_name(k: int) -> str:
    return f"stage_{k:02d}"


# ---------------------------------------------------------------- save ----------------------------------
def _check_task_state(task_state: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if task_state is None:
        return {}
    if not isinstance(task_state, Mapping):
        raise AdapterSetError(f"task_state must be a dict[str, Tensor], got {type(task_state).__name__}")
    for key, value in task_state.items():
        if not isinstance(key, str) or not key:
            raise AdapterSetError(f"task_state keys must be non-empty strings, got {key!r}")
        if not isinstance(value, Tensor):
            raise AdapterSetError(f"task_state[{key!r}] must be a Tensor, got {type(value).__name__}")
    return dict(task_state)


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise AdapterSetError(f"metadata must be a JSON-serialisable dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as exc:
        raise AdapterSetError(f"metadata must be JSON-serialisable: {exc}") from exc


def _stage_state_dict(state: StageLoRAState, holder: nn.Module, adapter: str) -> dict[str, Tensor]:
    """PEFT-format state dict of one adapter: ``base_model.model.<path>.lora_{A,B}.weight``."""
    out = {}
    for path, module in holder.named_modules():
        if isinstance(module, StageLoRALayer) and adapter in module.lora_A:
            for factor in ("lora_A", "lora_B"):
                weight = getattr(module, factor)[adapter].weight
                out[f"{PEFT_PREFIX}{path}.{factor}.weight"] = weight.detach().to("cpu").contiguous().clone()
    return out


def save_adapter_set(
    model: nn.Module,
    directory: str | os.PathLike,
    set_name: str,
    task_state: Mapping[str, Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save resident set ``set_name`` to ``directory/set_name`` atomically; returns that path.

    ``task_state``: non-LoRA task parameters (e.g. ``{"phi": ..., "rho": (K,)}``) for ``task.safetensors``;
    ``metadata``: JSON-serialisable task description. When omitted, those remembered for the set (from
    an earlier save/load) are written. An existing folder of that name is replaced as a whole.
    """
    validate_set_name(set_name)
    holder, state = get_state(model)
    record = state.record(set_name)
    tensors = _check_task_state(task_state) if task_state is not None else dict(record.task_state)
    meta = _check_metadata(metadata) if metadata is not None else dict(record.metadata)
    first = record.configs[0]
    info = {
        "format_version": FORMAT_VERSION,
        "name": set_name,
        "num_stages": record.num_stages,
        "gamma": first.gamma,
        "conv_layout": first.conv_layout,
        "stages": [_stage_dir_name(k) for k in range(record.num_stages)],
        "adapter_names": record.adapter_names,
        "task_parameters": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        "metadata": meta,
        "base_fingerprint": base_fingerprint(holder),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / set_name
    tmp = Path(tempfile.mkdtemp(prefix=f".{set_name}.tmp-", dir=directory))
    try:
        for k, adapter in enumerate(record.adapter_names):
            stage_dir = tmp / _stage_dir_name(k)
            config = copy.deepcopy(record.configs[k])
            config.inference_mode = True
            config.save_pretrained(str(stage_dir))
            save_file(
                _stage_state_dict(state, holder, adapter), str(stage_dir / WEIGHTS_FILE), {"format": "pt"}
            )
        task = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_file(task, str(tmp / TASK_FILE), {"format": "pt"})
        info[SET_CHECKSUM_KEY] = record_checksums(tmp, _weight_files(record.num_stages))
        (tmp / SET_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record.task_state, record.metadata = tensors, meta
    return target


def record_set_checksums(path: str | os.PathLike) -> dict[str, str]:
    """Re-record the sha256 of a saved set's weight files in its ``adapter_set.json``; returns them.

    For files rewritten on purpose after :func:`save_adapter_set` (e.g. cast to float16 for shipping);
    ``adapter_set.json`` is replaced atomically.
    """
    path = Path(path)
    info = _read_set_info(path, None)
    info[SET_CHECKSUM_KEY] = record_checksums(path, _weight_files(info["num_stages"]))
    write_atomic(path / SET_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info[SET_CHECKSUM_KEY]


# ---------------------------------------------------------------- load ----------------------------------
def _weight_files(num_stages: int) -> list[str]:
    """The weight files of a K-stage set folder, relative to it (the keys of its sha256 record)."""
    return [f"{_stage_dir_name(k)}/{WEIGHTS_FILE}" for k in range(num_stages)] + [TASK_FILE]


def _read_set_info(path: Path, set_name: str | None) -> dict[str, Any]:
    info_file = path / SET_FILE
    if not info_file.is_file():
        raise AdapterSetError(f"no {SET_FILE} in {path}: not an adapter set folder")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterSetError(f"cannot read {info_file}: {exc}") from exc
    required = {
        "format_version",
        "name",
        "num_stages",
        "gamma",
        "conv_layout",
        "metadata",
        "base_fingerprint",
    }
    if not isinstance(info, dict) or not required <= set(info):
        raise AdapterSetError(f"{info_file} is missing keys {sorted(required - set(info or {}))}")
    if info["format_version"] != FORMAT_VERSION:
        raise AdapterSetError(
            f"{info_file}: format_version {info['format_version']} (expected {FORMAT_VERSION})"
        )
    validate_set_name(info["name"])
    if set_name is not None and info["name"] != set_name:
        raise AdapterSetError(f"{info_file} names the set {info['name']!r}, expected {set_name!r}")
    k = info["num_stages"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AdapterSetError(f"{info_file}: num_stages must be an int >= 1, got {k!r}")
    return info


def _expected_tensors(holder: nn.Module, config: StageLoRAConfig) -> dict[str, tuple[int, ...]]:
    """PEFT-format key -> shape that ``config`` would create on ``holder``."""
    expected = {}
    for name, module in config.targeted_modules(holder).items():
        r_key = get_pattern_key(config.rank_pattern.keys(), name)
        rank = config.rank_pattern.get(r_key, config.r)
        for factor, shape in factor_shapes(module, rank, config.conv_layout).items():
            expected[f"{PEFT_PREFIX}{name}.{factor}"] = shape
    return expected


def _read_stage(holder: nn.Module, stage_dir: Path, info: dict[str, Any]) -> tuple[StageLoRAConfig, dict]:
    """Load and fully validate one stage folder against the model; nothing is changed."""
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (stage_dir / file).is_file():
            raise AdapterSetError(f"stage folder {stage_dir} is missing {file}")
    try:
        config = StageLoRAConfig.from_pretrained(str(stage_dir))
    except (TypeError, ValueError, OSError) as exc:
        raise AdapterSetError(f"invalid {stage_dir / CONFIG_FILE}: {exc}") from exc
    if config.conv_layout != info["conv_layout"] or config.num_stages != info["num_stages"]:
        raise AdapterSetError(
            f"{stage_dir / CONFIG_FILE}: conv_layout={config.conv_layout!r}, num_stages={config.num_stages} "
            f"disagree with {SET_FILE} (conv_layout={info['conv_layout']!r}, num_stages={info['num_stages']})"
        )
    try:
        expected = _expected_tensors(holder, config)
    except (TypeError, ValueError) as exc:
        raise AdapterSetError(f"{stage_dir}: its target modules do not fit this model: {exc}") from exc
    try:
        tensors = load_file(str(stage_dir / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterSetError(f"cannot read {stage_dir / WEIGHTS_FILE}: {exc}") from exc
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterSetError(
            f"{stage_dir / WEIGHTS_FILE}: missing keys {missing}, unexpected keys {unexpected}"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterSetError(
                f"{stage_dir / WEIGHTS_FILE}: {key} has shape "
                f"{tuple(tensors[key].shape)}, this model needs {shape}"
            )
        if not tensors[key].is_floating_point():
            raise AdapterSetError(
                f"{stage_dir / WEIGHTS_FILE}: {key} has non-float dtype {tensors[key].dtype}"
            )
    config.inference_mode = False
    return config, tensors


def load_adapter_set(
    model: nn.Module,
    directory: str | os.PathLike,
    set_name: str | None = None,
    *,
    num_stages: int | None = None,
    trainable: bool = False,
    activate: bool = True,
    verify_integrity: bool = True,
) -> LoadedAdapterSet:
    """Load an adapter set onto ``model`` (the denoiser, or a module containing the adapted one).

    ``directory`` is the set folder itself, or its parent when ``set_name`` is given. Everything is
    checked before the model is touched: the base fingerprint, K (against ``num_stages`` and the sets
    already resident), every stage folder, every tensor's name, shape and dtype, the task file. Any
    problem raises :class:`AdapterSetError` (a ``ValueError``) and leaves the model exactly as it was.
    Each weight file must match the sha256 recorded in ``adapter_set.json`` (``IntegrityError``, also a
    ``ValueError``) unless ``verify_integrity=False``; sets saved before the record existed load unchecked.
    The loaded adapters are frozen unless ``trainable``; the set becomes active if ``activate``.
    """
    path = Path(directory) / validate_set_name(set_name) if set_name is not None else Path(directory)
    if not path.is_dir():
        raise AdapterSetError(f"adapter set folder {path} does not exist")
    info = _read_set_info(path, set_name)
    name, k = info["name"], info["num_stages"]
    holder = find_state_holder(model) or model
    state = getattr(holder, STATE_ATTR, None)
    if state is not None and name in state.sets:
        raise AdapterSetError(f"adapter set {name!r} is already resident; delete_adapter_set it first")
    _check_not_merged(holder)
    _check_num_stages(state, k, num_stages)
    fingerprint = base_fingerprint(holder)
    if info["base_fingerprint"] not in (fingerprint, base_fingerprint(holder, exact_dtype=True)):
        raise AdapterSetError(
            f"adapter set {name!r} was trained on another base model: fingerprint {info['base_fingerprint']} "
            f"!= this model's {fingerprint} (base weight values differ)"
        )
    missing = [_stage_dir_name(i) for i in range(k) if not (path / _stage_dir_name(i)).is_dir()]
    if missing:
        raise AdapterSetError(f"adapter set {path} declares K={k} but stage folders {missing} are missing")
    if verify_integrity and SET_CHECKSUM_KEY in info:
        present = [file for file in _weight_files(k) if (path / file).is_file()]
        verify_checksums(path, info[SET_CHECKSUM_KEY], present, source=str(path / SET_FILE))
    stages = [_read_stage(holder, path / _stage_dir_name(i), info) for i in range(k)]
    if not (path / TASK_FILE).is_file():
        raise AdapterSetError(f"adapter set {path} is missing {TASK_FILE}")
    try:
        task_state = load_file(str(path / TASK_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterSetError(f"cannot read {path / TASK_FILE}: {exc}") from exc
    declared = info.get("task_parameters", {})
    if set(declared) != set(task_state):
        raise AdapterSetError(
            f"{path / TASK_FILE} holds {sorted(task_state)}, {SET_FILE} declares {sorted(declared)}"
        )

    configs = [cfg for cfg, _ in stages]
    record = _add_set(holder, name, configs, trainable, weights=[tensors for _, tensors in stages])
    record.task_state, record.metadata = task_state, info["metadata"]
    state = getattr(holder, STATE_ATTR)
    if activate and state.active_set != name:
        set_adapter_set(holder, name)
    return _loaded(record)


# ---------------------------------------------------------------- resident sets -------------------------

"""Adapter sets: K stage adapters (+ task parameters) as one swappable, savable task mode.

A set named ``ratio-25`` holds the adapters ``ratio-25/stage_00`` ... ``ratio-25/stage_{K-1}`` in every
StageLoRA layer; several sets can be resident at once and :func:`set_adapter_set` switches between them
without disk access. On disk a set is a folder::

    <dir>/<set_name>/
      adapter_set.json        name, K, gamma, conv_layout, metadata, base fingerprint, task keys
      stage_00/adapter_config.json, adapter_model.safetensors   (PEFT format, plain-PEFT loadable)
      ...
      task.safetensors        non-LoRA task parameters (Phi, rho/lambda/mu per stage, ...)

Saving is atomic (a temp folder next to the target, then ``os.replace``). Loading validates everything
first (fingerprint of the base weights, K, every stage folder, every tensor's name and shape) and only
then touches the model; an unexpected failure while injecting is rolled back, so the model is either
fully loaded or exactly as before.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lorun_peft.integrity import SET_CHECKSUM_KEY, record_checksums, verify_checksums
from lorun_peft.io import replace_folder, write_atomic

from .config import StageLoRAConfig
from .layers import StageLoRALayer, factor_shapes
from .stage import (
    STATE_ATTR,
    AdapterSetRecord,
    StageLoRAState,
    deactivate_all,
    find_state_holder,
    get_state,
    materialize_active_set,
    refresh_layers,
)

FORMAT_VERSION = 1
SET_FILE = "adapter_set.json"
TASK_FILE = "task.safetensors"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_FORBIDDEN_CHARS = re.compile(r'[\\/<>:"|?*\s\x00-\x1f.]')


class AdapterSetError(ValueError):
    """An adapter set cannot be saved or loaded (bad name, wrong base, missing or malformed files)."""


@dataclass
class LoadedAdapterSet:
    """What :func:`load_adapter_set` / :func:`set_adapter_set` hand back besides the adapters themselves."""

    name: str
    task_state: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    num_stages: int = 0
    adapter_names: list[str] = field(default_factory=list)


#: Longest adapter set name: a folder name (plus temp-folder prefixes) stays far below the 255-byte limit.
MAX_SET_NAME_LENGTH = 100


def validate_set_name(name: str) -> str:
    """Return ``name`` if it can name an adapter set, else raise ``ValueError``.

    It becomes a folder name and a prefix of ModuleDict keys, so it must be non-empty, at most
    :data:`MAX_SET_NAME_LENGTH` characters long, and contain no
    path separators, no "." (ModuleDict keys cannot, which also excludes ".."), no whitespace or
    control characters, and none of ``<>:"|?*``.
    """
    if not isinstance(name, str) or not name:
        raise AdapterSetError(f"adapter set name must be a non-empty string, got {name!r}")
    if len(name) > MAX_SET_NAME_LENGTH:
        raise AdapterSetError(
            f"adapter set name is {len(name)} characters long ({name[:24]}...); at most "
            f"{MAX_SET_NAME_LENGTH} are allowed (it becomes a folder name and a module key)"
        )
    bad = sorted(set(_FORBIDDEN_CHARS.findall(name)))
    if bad:
        raise AdapterSetError(
            f"invalid adapter set name {name!r}: it contains {bad}; use letters, digits, '-', '_' "
            "(no path separators, '.', '..', whitespace or <>:\"|?*)"
        )
    return name


def stage_adapter_name(set_name: str, k: int) -> str:
    """``"<set_name>/stage_<kk>"``, the adapter name of stage ``k``."""
    return f"{set_name}/stage_{k:02d}"


def _stage_dir_name(k: int) -> str:
    return f"stage_{k:02d}"


# ---------------------------------------------------------------- fingerprint ---------------------------
def _base_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Base weights by their original names: state-dict tensors minus adapters, ``.base_layer`` removed.

    While an adapter is merged, the saved original weight is used, so the fingerprint never changes.
    """
    out: list[tuple[str, Tensor]] = []
    seen: set[int] = set()

    def walk(prefix: str, module: nn.Module, original_weight: Tensor | None = None) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, BaseTunerLayer):
            walk(prefix, module.get_base_layer(), getattr(module, "_original_weight", None))
            return
        for name, param in module.named_parameters(recurse=False):
            tensor = original_weight if name == "weight" and original_weight is not None else param
            out.append((f"{prefix}.{name}" if prefix else name, tensor))
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                out.append((f"{prefix}.{name}" if prefix else name, buf))
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def base_fingerprint(model: nn.Module, *, exact_dtype: bool = False) -> str:
    """``"sha256:<hex>"`` over the base weights' names, shapes and values (adapters excluded).

    A clean model and the same model with StageLoRA adapters injected (or merged) have the same
    fingerprint; any change of a base weight's value changes it. Floating-point tensors are hashed as
    float64 bytes, so a backbone moved to another float dtype by an exact cast (float32 -> float64, or
    a float16 checkpoint loaded as float32) keeps its fingerprint and its adapter sets still load.
    ``exact_dtype=True`` gives the earlier format (each tensor's own dtype and bytes), still accepted
    when loading sets saved with it.
    """
    holder = find_state_holder(model) or model
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_tensors(holder), key=lambda item: item[0]):
        data = tensor.detach().to("cpu")
        if data.is_floating_point() and not exact_dtype:
            data, kind = data.to(torch.float64), "float"
        else:
            kind = str(data.dtype)
        data = data.contiguous()
        digest.update(f"{name}|{kind}|{tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------- injection -----------------------------
def _sync_peft_config(holder: nn.Module, state: StageLoRAState) -> None:
    """Keep PEFT's ``peft_config`` attribute equal to the resident adapters' configs."""
    holder.peft_config = {a: c for rec in state.sets.values() for a, c in zip(rec.adapter_names, rec.configs)}


def _unwrap_empty_layers(holder: nn.Module) -> None:
    """Replace StageLoRA layers that hold no adapter by their base layer (restores the clean structure)."""
    for name, module in list(holder.named_modules(remove_duplicate=False)):
        if isinstance(module, StageLoRALayer) and not module.lora_A:
            parent_name, _, child_name = name.rpartition(".")
            parent = holder.get_submodule(parent_name) if parent_name else holder
            setattr(parent, child_name, module.get_base_layer())


def _clear_if_empty(holder: nn.Module, state: StageLoRAState) -> None:
    if not state.sets:
        for attr in (STATE_ATTR, "peft_config"):
            if attr in holder.__dict__:
                delattr(holder, attr)


def _remove_adapters(holder: nn.Module, adapter_names: list[str]) -> None:
    doomed = set(adapter_names)
    for module in holder.modules():
        if isinstance(module, StageLoRALayer):
            for adapter in doomed & set(module.lora_A):
                module.delete_adapter(adapter)
    _unwrap_empty_layers(holder)


def _add_set(
    holder: nn.Module,
    set_name: str,
    configs: list[StageLoRAConfig],
    trainable: bool,
    weights: list[dict[str, Tensor]] | None = None,
) -> AdapterSetRecord:
    """Inject K adapters with PEFT (and copy ``weights`` into them); all-or-nothing."""
    had_state = hasattr(holder, STATE_ATTR)
    state: StageLoRAState = getattr(holder, STATE_ATTR) if had_state else StageLoRAState()
    names = [stage_adapter_name(set_name, k) for k in range(len(configs))]
    grads = {id(p): (p, p.requires_grad) for p in holder.parameters()}
    active = {id(m): m._active_adapter for m in holder.modules() if isinstance(m, StageLoRALayer)}
    old_peft_config = holder.__dict__.get("peft_config")
    old_peft_config = None if old_peft_config is None else dict(old_peft_config)  # PEFT extends it in place
    try:
        with warnings.catch_warnings():
            # PEFT warns when the model already has `peft_config`; adding to it is exactly what we do.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            for name, config in zip(names, configs):
                inject_adapter_in_model(config, holder, adapter_name=name)
        if weights is not None:
            _copy_weights(holder, names, weights)
    except BaseException:
        _remove_adapters(holder, names)
        for param, flag in grads.values():
            param.requires_grad_(flag)
        for module in holder.modules():
            if id(module) in active:
                module._active_adapter = active[id(module)]
        if old_peft_config is None:
            holder.__dict__.pop("peft_config", None)
        else:
            holder.peft_config = old_peft_config
        raise
    record = AdapterSetRecord(name=set_name, adapter_names=names, configs=configs)
    state.sets[set_name] = record
    setattr(holder, STATE_ATTR, state)
    refresh_layers(holder, state)
    _sync_peft_config(holder, state)
    # Trainability: the new set's factors as requested, every base weight frozen, other sets unchanged.
    new_params = set()
    for layer in state.layers:
        for name in names:
            if name in layer.lora_A:
                for module in (layer.lora_A[name], layer.lora_B[name]):
                    module.requires_grad_(trainable)
                    new_params.update(id(p) for p in module.parameters())
    adapter_params = {
        id(p) for layer in state.layers for d in (layer.lora_A, layer.lora_B) for p in d.parameters()
    }
    for param in holder.parameters():
        if id(param) not in adapter_params:
            param.requires_grad_(False)
        elif id(param) not in new_params and id(param) in grads:
            param.requires_grad_(grads[id(param)][1])
    deactivate_all(state)
    if state.active_set is None:
        state.active_set = set_name
    if state.merge_mode == "materialized":
        materialize_active_set(state)
    return record


def _copy_weights(holder: nn.Module, names: list[str], weights: list[dict[str, Tensor]]) -> None:
    """Copy PEFT-format tensors (``base_model.model.<path>.lora_A.weight``) into adapters ``names``."""
    layers = {n: m for n, m in holder.named_modules() if isinstance(m, StageLoRALayer)}
    with torch.no_grad():
        for adapter, tensors in zip(names, weights):
            for key, tensor in tensors.items():
                path, factor, _ = key.removeprefix(PEFT_PREFIX).rsplit(".", 2)
                target = getattr(layers[path], factor)[adapter].weight
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))


def _check_not_merged(holder: nn.Module | None) -> None:
    if holder is not None:
        merged = [m for m in holder.modules() if isinstance(m, StageLoRALayer) and m.merged]
        if merged:
            raise AdapterSetError(
                "a stage adapter is merged into the base weights; call unmerge(model) first"
            )


def _check_num_stages(state: StageLoRAState | None, num_stages: int, expected: int | None) -> None:
    if expected is not None and num_stages != expected:
        raise AdapterSetError(f"adapter set has K={num_stages} stages but K={expected} was expected")
    if state is not None and state.sets:
        resident_k = {rec.num_stages for rec in state.sets.values()}
        if resident_k != {num_stages}:
            raise AdapterSetError(
                f"adapter set has K={num_stages} stages but the resident sets have K={sorted(resident_k)}; "
                "all resident sets of one model share K"
            )


def add_stage_adapters(
    model: nn.Module, set_name: str, config: StageLoRAConfig, *, trainable: bool = True
) -> list[str]:
    """Add a set of ``config.num_stages`` fresh stage adapters to ``model`` (the denoiser) via PEFT.

    Ranks follow eq. 12 (``config.resolve_ranks`` on a copy of ``config``). Afterwards every stage's
    ``lora_A``/``lora_B`` requires grad (if ``trainable``), every base weight does not, other sets keep
    their flags, and no adapter is active outside ``stage()``. The set becomes active if none was.
    Returns the adapter names ``[f"{set_name}/stage_{k:02d}" for k in range(K)]``.
    """
    if not isinstance(config, StageLoRAConfig):
        raise TypeError(f"config must be a StageLoRAConfig, got {type(config).__name__}")
    validate_set_name(set_name)
    holder = find_state_holder(model) or model
    state = getattr(holder, STATE_ATTR, None)
    if state is not None and set_name in state.sets:
        raise AdapterSetError(f"adapter set {set_name!r} already exists; delete_adapter_set it first")
    _check_not_merged(holder)
    _check_num_stages(state, config.num_stages, None)
    resolved = copy.deepcopy(config)
    resolved.resolve_ranks(holder)
    configs = [copy.deepcopy(resolved) for _ in range(resolved.num_stages)]
    return _add_set(holder, set_name, configs, trainable).adapter_names


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
def _loaded(record: AdapterSetRecord) -> LoadedAdapterSet:
    return LoadedAdapterSet(
        name=record.name,
        task_state=dict(record.task_state),
        metadata=copy.deepcopy(record.metadata),
        num_stages=record.num_stages,
        adapter_names=list(record.adapter_names),
    )


def list_adapter_sets(model: nn.Module) -> list[str]:
    """Names of the resident adapter sets, in the order they were added."""
    holder = find_state_holder(model)
    return [] if holder is None else list(getattr(holder, STATE_ATTR).sets)


def set_adapter_set(model: nn.Module, name: str) -> LoadedAdapterSet:
    """Make resident set ``name`` the one ``stage(model, k)`` uses (no disk access).

    Returns its task state and metadata so the caller can switch its task parameters too. In
    ``"materialized"`` merge mode the K merged weights of the new set are built (the old set's dropped).
    """
    _, state = get_state(model)
    record = state.record(name)
    if any(layer.merged for layer in state.layers):
        raise AdapterSetError("a stage adapter is merged into the base weights; call unmerge(model) first")
    state.active_set = record.name
    if state.merge_mode == "materialized":
        materialize_active_set(state)
    return _loaded(record)


def delete_adapter_set(model: nn.Module, name: str) -> None:
    """Remove resident set ``name``; with no set left the model is structurally the clean base again."""
    holder, state = get_state(model)
    record = state.record(name)
    if any(a in layer.merged_adapters for layer in state.layers for a in record.adapter_names):
        raise AdapterSetError(
            f"adapter set {name!r} is merged into the base weights; call unmerge(model) first"
        )
    _remove_adapters(holder, record.adapter_names)
    del state.sets[name]
    if state.active_set == name:
        state.active_set = None
    refresh_layers(holder, state)
    _sync_peft_config(holder, state)
    _clear_if_empty(holder, state)

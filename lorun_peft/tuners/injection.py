"""Adapter sets on a model: injecting, switching and removing K stage adapters as one task mode.

A set named ``ratio-25`` holds the adapters ``ratio-25/stage_00`` ... ``ratio-25/stage_{K-1}`` in every
StageLoRA layer (injected with PEFT's ``inject_adapter_in_model``); several sets can be resident at once and
:func:`set_adapter_set` switches between them without disk access. Adding a set is all-or-nothing: a failure
while injecting or copying weights restores the adapters, ``requires_grad`` flags, active adapters and
``peft_config`` the model had. Saving and loading sets is :mod:`lorun_peft.tuners.adapter_set`.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import inject_adapter_in_model
from torch import Tensor, nn

from .config import StageLoRAConfig
from .layers import StageLoRALayer
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

#: Key prefix of PEFT-format adapter tensors (``base_model.model.<path>.lora_A.weight``).
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

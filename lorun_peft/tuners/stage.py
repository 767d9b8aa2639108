"""Stage control: which stage adapter is active, the merge mode, and merge/unmerge.

The adapted denoiser carries a small :class:`StageLoRAState` (the resident adapter sets, the active
set, the merge mode and the list of StageLoRA layers). ``with stage(model, k):`` makes adapter k of
the active set the one every StageLoRA layer adds, by writing the layers' ``_active_adapter`` in ONE
place (:func:`_write_active`) and restoring it on exit. It never touches ``requires_grad``: PEFT's
``set_adapter`` freezes inactive adapters (peft issue #1571), which would stop the K-stage loop from
training all K adapters in one backward pass. The unfolding loop is therefore simply
``for k in range(K): with stage(denoiser, k): x = denoiser(z)``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .config import StageLoRAConfig
from .layers import MERGE_MODES, StageLoRALayer

STATE_ATTR = "_stage_lora_state"


@dataclass
class AdapterSetRecord:
    """One resident adapter set: K stage adapters plus what was loaded/saved with it."""

    name: str
    adapter_names: list[str]
    configs: list[StageLoRAConfig]
    task_state: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_stages(self) -> int:
        return len(self.adapter_names)


@dataclass
class StageLoRAState:
    """Bookkeeping kept on the adapted model (attribute ``_stage_lora_state``)."""

    sets: dict[str, AdapterSetRecord] = field(default_factory=dict)
    active_set: str | None = None
    merge_mode: str = "in_forward"
    layers: list[StageLoRALayer] = field(default_factory=list)

    def record(self, set_name: str | None = None) -> AdapterSetRecord:
        """The named set, or the active one when ``set_name`` is None."""
        name = self.active_set if set_name is None else set_name
        if name is None:
            raise ValueError(f"no active adapter set; resident sets: {list(self.sets)} (use set_adapter_set)")
        if name not in self.sets:
            raise ValueError(f"adapter set {name!r} is not resident; resident sets: {list(self.sets)}")
        return self.sets[name]


def find_state_holder(model: nn.Module) -> nn.Module | None:
    """The module carrying the StageLoRA state: ``model`` itself or its unique sub-module that has it."""
    if hasattr(model, STATE_ATTR):
        return model
    holders = [m for m in model.modules() if hasattr(m, STATE_ATTR)]
    if len(holders) > 1:
        raise ValueError(
            f"{len(holders)} sub-modules of {type(model).__name__} carry StageLoRA adapters; "
            "pass the one you mean"
        )
    return holders[0] if holders else None


def get_state(model: nn.Module) -> tuple[nn.Module, StageLoRAState]:
    """``(holder, state)`` of an adapted model; ``ValueError`` if it has no StageLoRA adapters."""
    holder = find_state_holder(model)
    if holder is None:
        raise ValueError(
            f"{type(model).__name__} has no StageLoRA adapters (use add_stage_adapters/load_adapter_set)"
        )
    return holder, getattr(holder, STATE_ATTR)


def refresh_layers(holder: nn.Module, state: StageLoRAState) -> None:
    """Re-scan the StageLoRA layers after adapters were added or removed; push the merge mode to them."""
    state.layers = [m for m in holder.modules() if isinstance(m, StageLoRALayer)]
    for layer in state.layers:
        layer.merge_mode = state.merge_mode


def _write_active(layer: StageLoRALayer, active: str | list[str]) -> None:
    """The one place that sets which adapter a StageLoRA layer adds (no requires_grad change)."""
    layer._active_adapter = active


def deactivate_all(state: StageLoRAState) -> None:
    """No adapter active: every StageLoRA layer computes its base layer."""
    for layer in state.layers:
        _write_active(layer, [])


def _merged_adapters(state: StageLoRAState) -> set[str]:
    return {a for layer in state.layers for a in layer.merged_adapters}


@contextmanager
def stage(model: nn.Module, k: int, set_name: str | None = None) -> Iterator[str]:
    """Within the block, adapter ``k`` of the active (or named) set is active in every StageLoRA layer.

    Yields the adapter name. ``requires_grad`` is left alone, so one backward through a K-stage loop
    reaches all K adapters. The previous activation is restored on exit (blocks may nest).
    Raises ``IndexError`` for ``k`` outside ``[0, K)`` and ``ValueError`` while another adapter is merged.
    """
    _, state = get_state(model)
    record = state.record(set_name)
    k = operator.index(k)
    if not 0 <= k < record.num_stages:
        raise IndexError(f"stage {k} out of range for adapter set {record.name!r} with K={record.num_stages}")
    adapter = record.adapter_names[k]
    merged = _merged_adapters(state)
    if merged and merged != {adapter}:
        raise ValueError(
            f"adapter(s) {sorted(merged)} are merged into the base weights; call unmerge(model) first"
        )
    layers = list(state.layers)
    previous = [layer._active_adapter for layer in layers]
    for layer in layers:
        _write_active(layer, [adapter])
    try:
        yield adapter
    finally:
        for layer, active in zip(layers, previous):
            _write_active(layer, active)


def active_adapter_set(model: nn.Module) -> str | None:
    """Name of the active adapter set (None if the model has no StageLoRA adapters or none is active)."""
    holder = find_state_holder(model)
    return None if holder is None else getattr(holder, STATE_ATTR).active_set


def get_merge_mode(model: nn.Module) -> str:
    """The current merge mode, one of ``MERGE_MODES``."""
    return get_state(model)[1].merge_mode


def materialize_active_set(state: StageLoRAState) -> None:
    """Build the K cached ``W0 + dW_k`` weights of the active set (and drop those of other sets)."""
    adapters = set(state.record().adapter_names) if state.active_set is not None else set()
    for layer in state.layers:
        layer.clear_materialized()
        for adapter in adapters & set(layer.lora_A):
            layer.materialize(adapter)


def set_merge_mode(model: nn.Module, mode: str) -> None:
    """Choose how StageLoRA layers apply ``dW_k``; see :data:`MERGE_MODES`.

    ``"in_forward"`` (default): ``W0 + dW_k`` then one conv/linear; activations cost = base.
    ``"materialized"``: K precomputed ``W0 + dW_k`` copies for the active set (built now, Block-K memory),
    used while autograd does not need them (inference); rebuilt when a weight changes.
    ``"unmerged"``: PEFT's ``base(x) + lora(x) * scaling`` (extra activations).
    Switching mode always drops the materialised copies.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    _, state = get_state(model)
    state.merge_mode = mode
    for layer in state.layers:
        layer.merge_mode = mode
        layer.clear_materialized()
    if mode == "materialized":
        materialize_active_set(state)


def _adapter_name(state: StageLoRAState, adapter: str | int) -> str:
    if isinstance(adapter, str):
        known = [a for rec in state.sets.values() for a in rec.adapter_names]
        if adapter not in known:
            raise ValueError(f"unknown adapter {adapter!r}; resident adapters: {known}")
        return adapter
    record = state.record()
    k = operator.index(adapter)
    if not 0 <= k < record.num_stages:
        raise IndexError(f"stage {k} out of range for adapter set {record.name!r} with K={record.num_stages}")
    return record.adapter_names[k]


def merge(model: nn.Module, adapter_name: str | int) -> None:
    """Write ``W0 + dW`` of one stage adapter into the base weights (name, or stage index of the active set).

    The original weights are kept, so :func:`unmerge` restores them bit-exactly. Only one adapter can be
    merged at a time.
    """
    _, state = get_state(model)
    adapter = _adapter_name(state, adapter_name)
    merged = _merged_adapters(state)
    if merged:
        raise ValueError(f"adapter(s) {sorted(merged)} already merged; call unmerge(model) first")
    for layer in state.layers:
        if adapter in layer.lora_A:
            layer.merge(adapter_names=[adapter])


def unmerge(model: nn.Module) -> None:
    """Restore the exact original base weights of every merged StageLoRA layer (no-op if none is merged)."""
    _, state = get_state(model)
    for layer in state.layers:
        if layer.merged:
            layer.unmerge()

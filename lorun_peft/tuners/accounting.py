"""Parameter accounting for LoRun: base, stage adapters (total and per stage) and task parameters apart.

The paper compares LoRun-K (one frozen base + K adapters) with Block-K (K independent denoisers) by
stored parameters; training cost depends on trainable ones. :func:`parameter_report` counts both,
deduplicating shared tensors, so a report answers "how much is on disk / in memory" and "how much
does the optimiser update" separately.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from .layers import StageLoRALayer


@dataclass(frozen=True)
class ParameterCount:
    """Number of scalar parameters stored and, of those, trainable (``requires_grad``)."""

    stored: int = 0
    trainable: int = 0

    def __add__(self, other: ParameterCount) -> ParameterCount:
        return ParameterCount(self.stored + other.stored, self.trainable + other.trainable)


@dataclass(frozen=True)
class ParameterReport:
    """``base``: the denoiser without adapters; ``adapters``: all stage adapters; ``per_adapter``: by
    adapter name (``"<set>/stage_<k>"``); ``task``: the task parameters passed in (Phi, rho, ...)."""

    base: ParameterCount
    adapters: ParameterCount
    per_adapter: dict[str, ParameterCount] = field(default_factory=dict)
    task: ParameterCount = ParameterCount()

    @property
    def total(self) -> ParameterCount:
        return self.base + self.adapters + self.task

    def format(self) -> str:
        """A small text table (counts in parameters)."""
        rows = [("base", self.base), ("adapters", self.adapters)]
        rows += [(f"  {name}", count) for name, count in self.per_adapter.items()]
        rows += [("task", self.task), ("total", self.total)]
        width = max(len(name) for name, _ in rows)
        lines = [f"{'':<{width}}  {'stored':>12}  {'trainable':>12}"]
        lines += [f"{name:<{width}}  {c.stored:>12,}  {c.trainable:>12,}" for name, c in rows]
        return "\n".join(lines)


def _count(tensors: Iterable[Tensor]) -> ParameterCount:
    stored = trainable = 0
    for t in tensors:
        stored += t.numel()
        trainable += t.numel() if t.requires_grad else 0
    return ParameterCount(stored, trainable)


def _task_tensors(
    task_parameters: Mapping[str, Tensor] | Iterable[Tensor] | nn.Module | None,
) -> list[Tensor]:
    if task_parameters is None:
        return []
    if isinstance(task_parameters, nn.Module):
        return list(task_parameters.parameters())
    values = task_parameters.values() if isinstance(task_parameters, Mapping) else task_parameters
    tensors = list(values)
    bad = [type(t).__name__ for t in tensors if not isinstance(t, Tensor)]
    if bad:
        raise TypeError(f"task_parameters must hold tensors, got {bad}")
    return tensors


def parameter_report(
    model: nn.Module, task_parameters: Mapping[str, Tensor] | Iterable[Tensor] | nn.Module | None = None
) -> ParameterReport:
    """Count ``model``'s parameters by role. Tensors shared between places are counted once.

    ``task_parameters`` (a dict of tensors, an iterable or a module) are counted as task parameters,
    also when they live inside ``model``; every other non-adapter parameter of ``model`` is base.
    """
    task = {id(t): t for t in _task_tensors(task_parameters)}
    per_adapter: dict[str, dict[int, Tensor]] = {}
    other_adapter: dict[int, Tensor] = {}
    for module in model.modules():
        if isinstance(module, StageLoRALayer):
            for name in module.lora_A:
                bucket = per_adapter.setdefault(name, {})
                for factor in (module.lora_A[name], module.lora_B[name]):
                    bucket.update({id(p): p for p in factor.parameters()})
        elif isinstance(module, BaseTunerLayer):
            base_ids = {id(p) for p in module.get_base_layer().parameters()}
            other_adapter.update({id(p): p for p in module.parameters() if id(p) not in base_ids})
    adapter_ids = set(other_adapter).union(*[set(b) for b in per_adapter.values()])
    base = {id(p): p for p in model.parameters() if id(p) not in adapter_ids and id(p) not in task}
    all_adapters = dict(other_adapter)
    for bucket in per_adapter.values():
        all_adapters.update(bucket)
    return ParameterReport(
        base=_count(base.values()),
        adapters=_count(all_adapters.values()),
        per_adapter={name: _count(bucket.values()) for name, bucket in per_adapter.items()},
        task=_count(task.values()),
    )

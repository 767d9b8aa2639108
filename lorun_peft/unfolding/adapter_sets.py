"""Adapter sets on a LoRunModel: phase 2's swappable task modes, added, switched, saved, loaded, pushed.

An adapter set is K stage LoRA adapters on the shared denoiser (through :mod:`lorun_peft.tuners`) plus
the set's own task parameters (a physics operator, e.g. a learned CS matrix of another ratio, and the
step parameters), kept in ``model.adapter_tasks[name]``. The phase-1 physics and steps stay in the
backbone, frozen once a set exists; switching sets switches adapters and task parameters together.
:class:`AdapterSetMixin` holds these methods so that ``model.py`` keeps the network itself; it relies
on the attributes ``LoRunModel.__init__`` creates (listed on the class). Set references (folders, Hub
ids, bare names) resolve in one place, :func:`_resolve_adapter_dir`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lorun_peft import hub
from lorun_peft.physics import LinearOperator, as_operator
from lorun_peft.tuners import (
    StageLoRAConfig,
    StageLoRALayer,
    load_adapter_set,
    validate_set_name,
)
from lorun_peft.tuners import add_stage_adapters as _add_stage_adapters
from lorun_peft.tuners import delete_adapter_set as _delete_adapter_set
from lorun_peft.tuners import save_adapter_set as _save_adapter_set
from lorun_peft.tuners import set_adapter_set as _set_adapter_set
from lorun_peft.tuners.adapter_set import TASK_FILE

from .backbone_io import _build_physics
from .steps import StageSteps, TaskParameters


def _resolve_adapter_dir(
    path_or_hub_id: str | os.PathLike,
    set_name: str | None,
    revision: str | None = None,
    default_source: str | os.PathLike | None = None,
) -> Path:
    """The local folder of one adapter set (the folder holding ``adapter_set.json``).

    The one place that turns a user's reference into a folder (via ``lorun_peft.hub.resolve_adapter_dir``):
    a local folder holding ``<set_name>/``, a set folder itself, a Hub repo id (downloaded, or taken
    from the cache when offline), or a bare set name looked up in ``default_source`` (where the
    backbone came from). Unknown references raise ``FileNotFoundError`` naming what is available.
    """
    return hub.resolve_adapter_dir(path_or_hub_id, set_name, default_source=default_source, revision=revision)


class AdapterSetMixin:
    """The adapter-set methods of :class:`~lorun_peft.unfolding.LoRunModel` (listed before
    ``PreTrainedModel`` among its bases, so they replace transformers' PEFT ``load_adapter`` and
    ``disable_adapters``).

    Needs ``config`` (a ``LoRunConfig``), the attributes annotated below (set by ``LoRunModel.__init__``)
    and ``_freeze_unused_lambda``. ``config`` is not annotated here: transformers reads the annotation
    of ``config`` on model classes (``get_type_hints``) to find their config class.
    """

    denoisers: nn.ModuleList
    task: TaskParameters
    adapter_tasks: nn.ModuleDict
    name_or_path: str
    _active_set: str | None
    _adapters_disabled: bool

    def _check_set(self, name: str) -> None:
        if name not in self.adapter_tasks:
            raise ValueError(f"no adapter set {name!r}; adapter sets: {self.list_adapter_sets()}")

    def _check_shared_backbone(self) -> None:
        if self.config.mode != "shared":
            raise ValueError(
                f"adapter sets need a shared backbone (phase 1), this model is {self.config.mode!r}; "
                "train or load a mode='shared' model first"
            )

    def _freeze_backbone(self) -> None:
        """Lorun mode: the denoiser's base weights and the phase-1 physics/steps do not train."""
        adapters = {
            id(p)
            for layer in self.modules()
            if isinstance(layer, StageLoRALayer)
            for p in [*layer.lora_A.parameters(), *layer.lora_B.parameters()]
        }
        for param in self.denoisers.parameters():
            if id(param) not in adapters:
                param.requires_grad_(False)
        self.task.requires_grad_(False)

    def _register_task(self, name: str, task: TaskParameters, trainable: bool) -> None:
        reference = self.task.steps.raw_lambda
        task = task.to(device=reference.device, dtype=reference.dtype)
        task.requires_grad_(trainable)
        self._freeze_unused_lambda(task)
        self.adapter_tasks[name] = task

    def add_stage_adapters(
        self, set_name: str, config: StageLoRAConfig, physics: LinearOperator | None = None
    ) -> list[str]:
        """Phase 2: add a trainable adapter set (K stage adapters + its task parameters) and activate it.

        Freezes the backbone (denoiser and phase-1 physics/steps). The set's task parameters start as a
        copy of the phase-1 physics and steps, or use ``physics`` (e.g. a CS operator of another ratio)
        with a copy of the phase-1 steps; they and the K adapters are trainable. Returns the adapter names.
        """
        self._check_shared_backbone()
        validate_set_name(set_name)
        if set_name in self.adapter_tasks:
            raise ValueError(
                f"adapter set {set_name!r} already exists; delete_adapter_set({set_name!r}) first"
            )
        if not isinstance(config, StageLoRAConfig):
            raise TypeError(f"config must be a StageLoRAConfig, got {type(config).__name__}")
        if config.num_stages != self.config.num_stages:
            raise ValueError(
                f"StageLoRAConfig has num_stages={config.num_stages}, this model has "
                f"K={self.config.num_stages}"
            )
        if physics is not None:
            physics = as_operator(physics)
            physics.get_config()  # a set's physics is saved with it: refuse what cannot be rebuilt now
        task = TaskParameters(
            copy.deepcopy(self.task.physics) if physics is None else physics, copy.deepcopy(self.task.steps)
        )
        names = _add_stage_adapters(self.denoisers[0], set_name, config, trainable=True)
        self._freeze_backbone()
        self._register_task(set_name, task, trainable=True)
        self.set_adapter_set(set_name)
        return names

    def set_adapter_set(self, name: str) -> None:
        """Make adapter set ``name`` (its stage adapters and task parameters) the one that runs."""
        self._check_set(name)
        _set_adapter_set(self.denoisers[0], name)
        self._active_set = name

    def list_adapter_sets(
        self, source: str | os.PathLike | None = None, revision: str | None = None
    ) -> list[str]:
        """Names of the resident adapter sets, in the order they were added.

        With ``source`` (a local folder or a Hub repo id): the sets available there, sorted.
        """
        if source is not None:
            return hub.list_adapter_sets(source, revision=revision)
        return list(self.adapter_tasks.keys())

    def delete_adapter_set(self, name: str) -> None:
        """Remove adapter set ``name`` (adapters and task parameters).

        If it was active, the first remaining set becomes active. With no set left the model is a shared
        backbone again (still frozen: call ``model.requires_grad_(True)`` to train phase 1 further).
        """
        self._check_set(name)
        _delete_adapter_set(self.denoisers[0], name)
        del self.adapter_tasks[name]
        if self._active_set == name:
            remaining = self.list_adapter_sets()
            self._active_set = None
            if remaining:
                self.set_adapter_set(remaining[0])

    def _set_metadata(self, name: str) -> dict[str, Any]:
        return {
            "physics": self.adapter_tasks[name].physics.get_config(),
            "algorithm": self.config.algorithm,
            "num_stages": self.config.num_stages,
            "step_init": self.config.step_init,
            "step_parametrization": "softplus",
        }

    def save_adapter_set(self, directory: str | os.PathLike, name: str | None = None) -> Path:
        """Save adapter set ``name`` (default: the active one) to ``directory/<name>/``, atomically.

        Writes the K stage adapters, ``task.safetensors`` (the set's physics tensors and raw step
        parameters) and, in ``adapter_set.json``, the set's physics config, algorithm and K. Returns the
        set's folder.
        """
        name = self._active_set if name is None else name
        if name is None:
            raise ValueError("no adapter set to save: this model has none (add_stage_adapters first)")
        self._check_set(name)
        task_state = {key: value.detach() for key, value in self.adapter_tasks[name].state_dict().items()}
        return _save_adapter_set(
            self.denoisers[0], directory, name, task_state=task_state, metadata=self._set_metadata(name)
        )

    def load_adapter(
        self,
        path_or_hub_id: str | os.PathLike,
        set_name: str | None = None,
        revision: str | None = None,
        trainable: bool = False,
        verify_integrity: bool = True,
    ) -> str:
        """Load an adapter set saved by :meth:`save_adapter_set` onto this backbone and activate it.

        ``path_or_hub_id``: a folder or Hub repo holding ``<set_name>/``, the set folder itself, or (with
        ``set_name=None``) a set name stored beside the backbone this model was loaded from. All or nothing:
        a set saved for another backbone (fingerprint), K or algorithm, or whose task tensors do not fit
        its physics, raises ``ValueError`` and leaves the model as it was. The set's adapters and task
        parameters are frozen unless ``trainable``. Each weight file must match the sha256 recorded in
        its ``adapter_set.json`` unless ``verify_integrity=False``. Returns the set's name.
        """
        self._check_shared_backbone()
        directory = _resolve_adapter_dir(
            path_or_hub_id, set_name, revision, default_source=self.name_or_path or None
        )
        loaded = load_adapter_set(
            self.denoisers[0],
            directory,
            num_stages=self.config.num_stages,
            trainable=trainable,
            activate=False,
            verify_integrity=verify_integrity,
        )
        try:
            if set_name is not None and loaded.name != set_name:
                raise ValueError(f"{directory} holds adapter set {loaded.name!r}, expected {set_name!r}")
            task = self._task_from_saved(loaded.name, loaded.task_state, loaded.metadata)
        except Exception:
            _delete_adapter_set(self.denoisers[0], loaded.name)
            raise
        self._freeze_backbone()
        self._register_task(loaded.name, task, trainable=trainable)
        self.set_adapter_set(loaded.name)
        return loaded.name

    def _task_from_saved(
        self, name: str, state: dict[str, Tensor], metadata: dict[str, Any]
    ) -> TaskParameters:
        for key in ("algorithm", "num_stages"):
            if metadata.get(key) != getattr(self.config, key):
                raise ValueError(
                    f"adapter set {name!r} was trained for {key}={metadata.get(key)!r}, this model has "
                    f"{key}={getattr(self.config, key)!r}"
                )
        if not isinstance(metadata.get("physics"), dict):
            raise ValueError(
                f"adapter set {name!r} has no physics config in its metadata; it is not a LoRun set"
            )
        steps = StageSteps(self.config.num_stages, self.config.algorithm, metadata.get("step_init", 0.5))
        task = TaskParameters(_build_physics(metadata["physics"]), steps)
        expected = {key: tuple(value.shape) for key, value in task.state_dict().items()}
        found = {key: tuple(value.shape) for key, value in state.items()}
        if expected != found:
            raise ValueError(
                f"{TASK_FILE} of adapter set {name!r} does not fit its physics "
                f"{metadata['physics']}: expected {expected}, found {found}"
            )
        task.load_state_dict(state, strict=True)
        return task

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Context: run the phase-1 backbone alone (Block-K-share: no adapters, phase-1 physics/steps).

        Outside ``stage()`` no adapter is active, so the denoiser computes its base weights; a stage
        adapter merged into them (``lorun_peft.tuners.merge``) would change that, hence the check.
        """
        if any(layer.merged for layer in self.modules() if isinstance(layer, StageLoRALayer)):
            raise ValueError(
                "a stage adapter is merged into the base weights; call lorun_peft.tuners.unmerge first"
            )
        previous = self._adapters_disabled
        self._adapters_disabled = True
        try:
            yield
        finally:
            self._adapters_disabled = previous

    def push_adapter_set(self, repo_id: str, set_name: str | None = None, **kwargs: Any) -> Any:
        """Push adapter set ``set_name`` (default: the active one) to ``<repo_id>/<set_name>/``.

        One commit with a regenerated model card (:func:`lorun_peft.hub.push_adapter_set`).
        """
        return hub.push_adapter_set(self, repo_id, set_name, **kwargs)

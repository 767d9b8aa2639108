"""LoRunModel: a K-stage deep unfolding network (PGD, HQS or GAP) with block, shared or LoRun stages.

One forward pass is ``x_0 = physics.init(y)``, then for ``k = 1..K`` a data step (PGD eq. 5 or HQS
eq. 9, through the physics interface; GAP: HQS on an accumulated measurement) followed by the stage's
denoiser (eq. 7 / eq. 11). The mode decides what "the stage's denoiser" is: ``block`` has K
independent denoisers (Block-K), ``shared`` runs one denoiser at every stage (Block-K-share, LoRun's
phase 1), and ``lorun`` runs the frozen shared denoiser with stage ``k``'s LoRA adapter active
(phase 2), through ``lorun_peft.tuners``.

This module holds the network: construction, forward, the backbone's ``save_pretrained`` /
``from_pretrained`` (transformers', always the clean phase-1 weights, with the checks of
:mod:`.backbone_io`) and the parameter report. Adapter sets (K stage adapters plus their own task
parameters: ``add_stage_adapters``, ``save_adapter_set``, ``load_adapter`` ...) come from
:class:`~.adapter_sets.AdapterSetMixin`, ``restore`` (whole or tiled) from
:class:`~.restoring.RestoreMixin`, stage-wise gradient checkpointing from
:class:`~.checkpointing.StageCheckpointingMixin`; Hub references and pushes go through
:mod:`lorun_peft.hub`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.utils import CONFIG_NAME, ModelOutput, cached_file

from lorun_peft import hub
from lorun_peft.denoisers import DenoiserPreTrainedModel, denoiser_from_config
from lorun_peft.integrity import add_backbone_checksums
from lorun_peft.physics import LinearOperator, as_operator, pgd_step_size
from lorun_peft.pretrained_io import raise_on_loading_problems, save_atomically
from lorun_peft.tuners import (
    ParameterReport,
    StageLoRALayer,
    parameter_report,
    stage,
)

from .adapter_sets import AdapterSetMixin
from .backbone_io import _PUSH_KWARGS, _build_physics, _check_backbone_folder, _hub_kwargs, _loadable_source
from .checkpointing import StageCheckpointingMixin
from .config import LoRunConfig
from .inputs import _check_image_size, _crop
from .restoring import RestoreMixin
from .steps import StageSteps, TaskParameters, inverse_softplus


@dataclass
class LoRunOutput(ModelOutput):
    """Output of :meth:`LoRunModel.forward`.

    loss: eq. 13 when ``labels`` were given: the batch mean of ``||x_hat_i - x_i||_2^2`` (sum over
        the pixels of each image, mean over the batch).
    images: the final estimate ``x_K`` ``(B, C, H, W)``.
    stages: with ``return_stages=True``, the K stage estimates ``x_1 .. x_K`` (each ``(B, C, H, W)``,
        the last one is ``images``), for stage-wise PSNR curves.
    """

    loss: Tensor | None = None
    images: Tensor | None = None
    stages: tuple[Tensor, ...] | None = None


class LoRunModel(RestoreMixin, StageCheckpointingMixin, AdapterSetMixin, PreTrainedModel):
    """A K-stage unfolding network; see the module docstring and docs/unfolding.md.

    Submodules: ``denoisers`` (K denoisers in ``block`` mode, one otherwise), ``task`` (the phase-1
    physics and step parameters) and ``adapter_tasks`` (each adapter set's own task parameters, never
    part of the saved backbone). The adapter-set methods come from :class:`AdapterSetMixin`.
    """

    config_class = LoRunConfig
    base_model_prefix = "lorun"
    main_input_name = "measurement"
    supports_gradient_checkpointing = True

    def __init__(self, config: LoRunConfig) -> None:
        super().__init__(config)
        if config.physics is None or config.denoiser is None:
            raise ValueError(
                "LoRunConfig needs physics (a LinearOperator.get_config() dict) and denoiser (a denoiser "
                "config.to_dict()); or build the model with LoRunModel.from_components(physics, denoiser)"
            )
        count = config.num_stages if config.mode == "block" else 1
        self.denoisers = nn.ModuleList([denoiser_from_config(config.denoiser) for _ in range(count)])
        steps = StageSteps(config.num_stages, config.algorithm, config.step_init)
        self.task = TaskParameters(_build_physics(config.physics), steps)
        self.adapter_tasks = nn.ModuleDict()
        self._active_set: str | None = None
        self._adapters_disabled = False
        self.gradient_checkpointing = False
        self.post_init()
        self._freeze_unused_lambda(self.task)

    def _init_weights(self, module: nn.Module) -> None:
        """Steps start at ``step_init``; denoisers and physics keep their own initialisation.

        Uses transformers' guarded init so that values loaded by ``from_pretrained`` are kept.
        """
        if isinstance(module, StageSteps):
            raw = inverse_softplus(module.init)
            for param in module.parameters(recurse=False):
                hf_init.constant_(param, raw)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_components(
        cls,
        physics: LinearOperator,
        denoiser: DenoiserPreTrainedModel,
        num_stages: int,
        algorithm: str = "pgd",
        mode: str = "shared",
        step_init: float | str = 0.5,
        image_shape: tuple[int, ...] | None = None,
    ) -> LoRunModel:
        """Build a model around a physics operator and a denoiser, copying their weights.

        ``physics``: a :class:`LinearOperator`, or any object with ``A`` and ``A_adjoint`` (wrapped by
        :func:`~lorun_peft.physics.as_operator`; give it ``factory=``/``args=`` so the model can be saved).
        ``step_init="auto"`` (PGD) starts every ``rho_k`` at ``1 / ||A||^2`` for images of ``image_shape``
        (power iteration), a safe step (PGD diverges past ``2 / ||A||^2``). In ``block`` mode every stage
        starts as a copy of ``denoiser``. The model lands on the device and dtype of ``denoiser``.
        """
        if not isinstance(denoiser, DenoiserPreTrainedModel):
            raise TypeError(f"denoiser must be a lorun_peft denoiser, got {type(denoiser).__name__}")
        physics = as_operator(physics)
        if step_init == "auto":
            if algorithm != "pgd":
                raise ValueError(
                    "step_init='auto' sets PGD's rho to 1/||A||^2; HQS's mu has no such bound: pass a number"
                )
            if image_shape is None:
                raise ValueError("step_init='auto' needs image_shape=(1, C, H, W) for the power iteration")
            step_init = pgd_step_size(physics, image_shape)
        config = LoRunConfig(
            physics=physics.get_config(),
            denoiser={k: v for k, v in denoiser.config.to_diff_dict().items() if k != "transformers_version"},
            num_stages=num_stages,
            algorithm=algorithm,
            mode=mode,
            step_init=step_init,
        )
        model = cls(config)
        model.task.physics.load_state_dict(physics.state_dict())
        for stage_denoiser in model.denoisers:
            stage_denoiser.load_state_dict(denoiser.state_dict())
        reference = next(denoiser.parameters())
        return model.to(device=reference.device, dtype=reference.dtype)

    @classmethod
    def block_from_shared(cls, shared_model: LoRunModel) -> LoRunModel:
        """Block-K whose K denoisers start as copies of ``shared_model``'s phase-1 denoiser.

        Physics and step parameters are copied from the phase-1 backbone (adapter sets are ignored), so
        the new model reproduces ``shared_model``'s phase-1 output until it is trained.
        """
        if shared_model.config.mode != "shared":
            raise ValueError(
                f"block_from_shared needs a shared (or lorun) model, got mode {shared_model.mode!r}"
            )
        config = copy.deepcopy(shared_model.config)
        config.mode = "block"
        state = {}
        for key, value in shared_model.backbone_state_dict().items():
            if key.startswith("denoisers.0."):
                rest = key[len("denoisers.0.") :]
                state.update({f"denoisers.{k}.{rest}": value for k in range(config.num_stages)})
            else:
                state[key] = value
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model.to(device=shared_model.device, dtype=shared_model.dtype)

    # ------------------------------------------------------------------ state
    @property
    def uses_noise_level(self) -> bool:
        """Whether the denoiser takes ``sigma_k`` (``noise_level_map=True``): ``lambda_k``'s only path."""
        return bool(self.denoisers[0].config.noise_level_map)

    def _freeze_unused_lambda(self, task: TaskParameters) -> None:
        """Freeze ``task``'s ``lambda_k`` when the denoiser has no noise-level map.

        ``lambda_k`` reaches the output only through ``sigma_k``; without a map it would be a trainable
        parameter that never gets a gradient, which DDP rejects ("parameters that were not used in
        producing loss") and optimisers carry for nothing.
        """
        if not self.uses_noise_level:
            task.steps.raw_lambda.requires_grad_(False)

    def requires_grad_(self, requires_grad: bool = True) -> LoRunModel:
        """``nn.Module.requires_grad_`` that keeps an unused ``lambda_k`` frozen (``uses_noise_level``)."""
        super().requires_grad_(requires_grad)
        for task in (self.task, *self.adapter_tasks.values()):
            self._freeze_unused_lambda(task)
        return self

    def step_parameters(self) -> list[nn.Parameter]:
        """The raw ``rho_k``/``mu_k`` and ``lambda_k`` of the phase-1 task and of every adapter set.

        The training loop gives them their own learning rate (``step_lr_multiplier``).
        """
        tasks = (self.task, *self.adapter_tasks.values())
        return [param for task in tasks for param in task.steps.parameters()]

    @property
    def mode(self) -> str:
        """``"block"``, ``"shared"``, or ``"lorun"`` (a shared backbone with at least one adapter set)."""
        return "lorun" if len(self.adapter_tasks) else self.config.mode

    @property
    def num_stages(self) -> int:
        return self.config.num_stages

    @property
    def active_adapter_set(self) -> str | None:
        """Name of the adapter set that runs (``None`` outside lorun mode)."""
        return self._active_set

    @property
    def active_task(self) -> TaskParameters:
        """Task parameters in use: the active adapter set's, or the phase-1 ones."""
        if self._active_set is None or self._adapters_disabled:
            return self.task
        return self.adapter_tasks[self._active_set]

    @property
    def physics(self) -> LinearOperator:
        """The physics operator in use (the active set's, or the phase-1 one)."""
        return self.active_task.physics

    @property
    def steps(self) -> StageSteps:
        """The step parameters in use (the active set's, or the phase-1 ones)."""
        return self.active_task.steps

    @property
    def shared_denoiser(self) -> DenoiserPreTrainedModel:
        """The one denoiser of a shared/lorun model (the one that carries the stage adapters)."""
        if self.config.mode == "block":
            raise ValueError("a block model has K denoisers; use model.denoisers[k]")
        return self.denoisers[0]

    # ------------------------------------------------------------------ forward
    def _denoise(self, k: int, z: Tensor, sigma: Tensor | None, adapter_set: str | None) -> Tensor:
        if self.config.mode == "block":
            return self.denoisers[k](z, sigma=sigma)
        denoiser = self.denoisers[0]
        if adapter_set is None:
            return denoiser(z, sigma=sigma)
        with stage(denoiser, k, adapter_set):
            return denoiser(z, sigma=sigma)

    def _stage(
        self,
        task: TaskParameters,
        k: int,
        x: Tensor,
        y: Tensor,
        sigma: Tensor | None,
        adapter_set: str | None,
    ) -> Tensor:
        """Stage ``k``: data step then denoiser with stage ``k``'s adapter of ``adapter_set`` (None: none).

        Self-contained: the set is an argument, not read from the model, so gradient checkpointing
        recomputes stage ``k`` in the backward pass with the adapter and merge mode of its forward.
        """
        return self._denoise(k, task.data_step(k, x, y), sigma, adapter_set)

    def forward(
        self,
        measurement: Tensor,
        labels: Tensor | None = None,
        return_stages: bool = False,
        image_size: tuple[int, int] | None = None,
    ) -> LoRunOutput:
        """Run the K stages on a batched measurement (layout: the physics' ``check_measurement``).

        Args:
            measurement: ``y``, batched, e.g. ``(B, C*n, h, w)`` for block CS, ``(B, H, W')`` for CASSI.
            labels: ground truth ``(B, C, H, W)``; adds ``loss`` (eq. 13) to the output.
            return_stages: also return the K stage estimates.
            image_size: ``(H, W)`` to crop the estimates to when the physics works on a padded grid
                (block CS with sides that are not multiples of the block); defaults to the labels' size.
        """
        task = self.active_task
        sigmas = task.steps.sigma() if self.uses_noise_level else None
        if image_size is None and labels is not None:
            image_size = tuple(labels.shape[-2:])
        x = task.initial_estimate(measurement)
        if image_size is not None:
            _check_image_size(task.physics, measurement, x, image_size)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        adapter_set = None if self._adapters_disabled else self._active_set
        stages = []
        y = measurement  # GAP: the accumulated measurement y_k, else the measurement itself
        for k in range(self.config.num_stages):
            sigma = None if sigmas is None else sigmas[k].expand(x.shape[0])
            if task.steps.algorithm == "gap":
                y = task.accumulate(y, measurement, x)
            if recompute:
                x = self._gradient_checkpointing_func(self._stage, task, k, x, y, sigma, adapter_set)
            else:
                x = self._stage(task, k, x, y, sigma, adapter_set)
            if return_stages:
                stages.append(x)
        images = _crop(x, image_size)
        loss = None
        if labels is not None:
            if labels.shape != images.shape:
                raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(images.shape)}")
            loss = (images - labels).pow(2).flatten(1).sum(dim=1).mean()
        return LoRunOutput(
            loss=loss,
            images=images,
            stages=tuple(_crop(s, image_size) for s in stages) if return_stages else None,
        )

    # ------------------------------------------------------------------ Hub
    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Push the clean phase-1 backbone and its model card in one commit (``hub.push_backbone``)."""
        return hub.push_backbone(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ reports
    def parameter_report(self) -> ParameterReport:
        """Stored and trainable parameter counts by role (shared tensors counted once).

        ``base``: the denoiser weights (all K denoisers in block mode); ``adapters`` / ``per_adapter``: the
        resident stage adapters; ``task``: physics and step parameters, the phase-1 ones and every
        adapter set's. ``.format()`` prints a table.
        """
        task = [*self.task.parameters(), *self.adapter_tasks.parameters()]
        return parameter_report(self, task_parameters=task)

    # ------------------------------------------------------------------ saving / loading the backbone
    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The clean phase-1 state dict: base weights under their original names, no LoRA, no set tasks."""
        layers = {name: module for name, module in self.named_modules() if isinstance(module, StageLoRALayer)}
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("adapter_tasks."):
                continue
            layer = next((name for name in layers if key.startswith(name + ".")), None)
            if layer is None:
                state[key] = value
            elif key.startswith(layer + ".base_layer."):  # PEFT's wrapping renamed it; anything else is LoRA
                state[layer + "." + key[len(layer + ".base_layer.") :]] = value
        for name, module in layers.items():  # a merged layer's base weight is W0 + dW: save W0
            if module.merged:
                state[name + ".weight"] = module.original_weight.detach()
        return state

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the backbone (``config.json`` + ``model.safetensors``), atomically.

        In lorun mode the saved backbone is the clean phase-1 model (mode ``"shared"``); adapter sets are
        saved with :meth:`save_adapter_set`. Files are written into a temporary folder inside
        ``save_directory`` and moved into place with ``os.replace``; ``config.json`` records the sha256
        of each weight file (:mod:`lorun_peft.integrity`), which ``from_pretrained`` verifies.
        ``push_to_hub=True`` (with ``repo_id``, default the folder's name) then pushes the same backbone
        with :meth:`push_to_hub`.
        """
        push = kwargs.pop("push_to_hub", False)
        push_kwargs = {key: kwargs.pop(key) for key in _PUSH_KWARGS if key in kwargs}
        if self.mode == "lorun":
            kwargs.setdefault("state_dict", self.backbone_state_dict())

        def write(tmp: str) -> None:
            super(LoRunModel, self).save_pretrained(tmp, **kwargs)
            add_backbone_checksums(tmp)

        save_atomically(save_directory, write)
        if push:
            self.push_to_hub(push_kwargs.pop("repo_id", None) or Path(save_directory).name, **push_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` that raises on missing, unexpected or mismatched keys.

        Reads safetensors only, and checks each weight file against the sha256 its ``config.json``
        records (``verify_integrity=False`` skips that, for weights edited on purpose); a damaged,
        truncated or changed file raises ``ValueError`` naming it. Returns the model in eval mode
        (transformers' convention): call ``.train()`` before training.
        """
        want_info = kwargs.pop("output_loading_info", False)
        verify_integrity = kwargs.pop("verify_integrity", True)
        pretrained_model_name_or_path, local = _loadable_source(
            pretrained_model_name_or_path, kwargs, verify_integrity
        )
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except SafetensorError as exc:
            raise ValueError(
                f"the weights of {pretrained_model_name_or_path} cannot be read ({exc}): the safetensors "
                "file is damaged or truncated; expected a complete file written by save_pretrained"
            ) from exc
        if not local.is_dir():  # a Hub repo: check the downloaded copy
            folder = Path(cached_file(str(pretrained_model_name_or_path), CONFIG_NAME, **_hub_kwargs(kwargs)))
            _check_backbone_folder(folder.parent, verify_integrity)
        raise_on_loading_problems(info, pretrained_model_name_or_path, "LoRunModel")
        model._freeze_unused_lambda(model.task)  # loading replaces the parameters built in __init__
        return (model, info) if want_info else model

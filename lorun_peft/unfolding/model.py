"""LoRunModel: a K-stage deep unfolding network (PGD or HQS) with block, shared or LoRun stages.

One forward pass is ``x_0 = physics.init(y)``, then for ``k = 1..K`` a data step (PGD eq. 5 or HQS
eq. 9, through the physics interface) followed by the stage's denoiser (eq. 7 / eq. 11). The mode
decides what "the stage's denoiser" is: ``block`` has K independent denoisers (Block-K), ``shared``
runs one denoiser at every stage (Block-K-share, LoRun's phase 1), and ``lorun`` runs the frozen
shared denoiser with stage ``k``'s LoRA adapter active (phase 2), through ``lorun_peft.tuners``.

An adapter set is a swappable task mode: K stage adapters plus the set's own task parameters (a
physics operator, e.g. a learned CS matrix of another ratio, and the step parameters). The phase-1
physics and steps stay in the backbone; switching sets switches adapters and task parameters
together. The backbone saves and loads with transformers' ``save_pretrained``/``from_pretrained``
(always the clean phase-1 weights), adapter sets with ``save_adapter_set``/``load_adapter``; Hub
references and pushes go through :mod:`lorun_peft.hub`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    ModelOutput,
    cached_file,
)

from lorun_peft import hub
from lorun_peft.denoisers import DenoiserPreTrainedModel, denoiser_from_config
from lorun_peft.integrity import (
    BACKBONE_CHECKSUM_KEY,
    add_backbone_checksums,
    backbone_weight_files,
    verify_checksums,
)
from lorun_peft.io import read_json_object
from lorun_peft.physics import LinearOperator, as_operator, pgd_step_size, physics_from_config
from lorun_peft.pretrained_io import raise_on_loading_problems, save_atomically
from lorun_peft.tuners import (
    ParameterReport,
    StageLoRAConfig,
    StageLoRALayer,
    get_merge_mode,
    load_adapter_set,
    parameter_report,
    set_merge_mode,
    stage,
    validate_set_name,
)
from lorun_peft.tuners import add_stage_adapters as _add_stage_adapters
from lorun_peft.tuners import delete_adapter_set as _delete_adapter_set
from lorun_peft.tuners import save_adapter_set as _save_adapter_set
from lorun_peft.tuners import set_adapter_set as _set_adapter_set

from .config import LoRunConfig
from .steps import StageSteps, TaskParameters, inverse_softplus
from .tiling import restore_in_tiles


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


#: ``save_pretrained(push_to_hub=True, ...)`` arguments that go to :meth:`LoRunModel.push_to_hub`.
_PUSH_KWARGS = (
    "repo_id",
    "token",
    "private",
    "commit_message",
    "commit_description",
    "revision",
    "create_pr",
)


def _check_backbone_folder(folder: Path, verify_integrity: bool) -> None:
    """Refuse a backbone folder whose ``config.json`` is unreadable or whose weights fail their sha256."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(f"{folder} has no {CONFIG_NAME}; expected a LoRunModel saved with save_pretrained")
    config = read_json_object(config_file, "the file is damaged or truncated")
    if verify_integrity and BACKBONE_CHECKSUM_KEY in config:
        verify_checksums(
            folder, config[BACKBONE_CHECKSUM_KEY], backbone_weight_files(folder), source=str(config_file)
        )


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments that locate a Hub file (for ``cached_file``)."""
    keys = ("revision", "cache_dir", "token", "local_files_only", "subfolder")
    return {key: kwargs[key] for key in keys if key in kwargs}


def _build_physics(config: dict[str, Any]) -> LinearOperator:
    """``physics_from_config``, on the CPU when transformers builds the model on the meta device.

    Operators check their placeholder tensors (e.g. a kernel's sum) at construction, which the meta
    device cannot do; physics tensors are tiny and are replaced by the checkpoint's right after.
    """
    if torch.get_default_device().type == "meta":
        with torch.device("cpu"):
            return physics_from_config(config)
    return physics_from_config(config)


def _crop(x: Tensor, image_size: tuple[int, ...] | None) -> Tensor:
    """``x[..., :H, :W]`` for ``image_size=(H, W)`` (no-op for None)."""
    if image_size is None:
        return x
    height, width = (int(s) for s in image_size)
    if height > x.shape[-2] or width > x.shape[-1]:
        raise ValueError(f"image_size {(height, width)} is larger than the estimate {tuple(x.shape[-2:])}")
    return x[..., :height, :width]


def _check_autocast_dtype(dtype: torch.dtype | None, device: torch.device) -> None:
    """``ValueError`` unless ``dtype`` is None or a half type the device computes natively."""
    from lorun_peft.training.precision import device_supports_bf16

    if dtype is None:
        return
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"autocast_dtype=torch.float16 needs a CUDA GPU, the model is on {device.type}")
    if dtype == torch.bfloat16 and not device_supports_bf16(device):
        raise ValueError(
            f"autocast_dtype=torch.bfloat16 needs native bf16 on the {device.type} (AVX512-BF16 or AMX on "
            "a CPU); without it PyTorch emulates bf16, far slower than fp32. Leave autocast_dtype=None"
        )


def _check_image_size(
    physics: LinearOperator, measurement: Tensor, grid: Tensor, image_size: tuple[int, ...]
) -> None:
    """``ValueError`` unless an image of ``image_size`` gives a measurement of ``measurement``'s shape.

    ``grid`` is the estimate ``(B, C, H', W')`` on the physics' grid (e.g. block CS's padded one); a size
    that could not have produced this measurement (too large, or smaller by a whole block) would
    otherwise be cropped silently.
    """
    if len(image_size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image_size must be (H, W) with positive integers, got {image_size!r}")
    shape = (grid.shape[0], grid.shape[1], int(image_size[0]), int(image_size[1]))
    try:
        expected = tuple(physics.measurement_shape(shape))
    except ValueError as exc:
        raise ValueError(f"image_size {tuple(image_size)} does not fit this physics: {exc}") from exc
    if expected != tuple(measurement.shape):
        raise ValueError(
            f"image_size {tuple(image_size)} does not match the measurement: an image of that size gives "
            f"a measurement of shape {expected}, got {tuple(measurement.shape)}"
        )


def _first_bad_index(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


class LoRunModel(PreTrainedModel):
    """A K-stage unfolding network; see the module docstring and docs/unfolding.md.

    Submodules: ``denoisers`` (K denoisers in ``block`` mode, one otherwise), ``task`` (the phase-1
    physics and step parameters) and ``adapter_tasks`` (each adapter set's own task parameters, never
    part of the saved backbone).
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

    # ------------------------------------------------------------------ gradient checkpointing
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, *, denoiser: bool = False
    ) -> None:
        """Recompute each stage in the backward pass instead of keeping its activations (training only).

        Only the K stage inputs are kept; each stage's activations exist once, during its backward.
        ``denoiser=True`` also recomputes inside the denoiser level by level (families with
        ``supports_gradient_checkpointing``), for the smallest peak. ``gradient_checkpointing_kwargs``
        go to ``torch.utils.checkpoint.checkpoint``; only the non-reentrant variant is supported (the
        reentrant one loses the gradients of parameters that are not stage inputs: step sizes, Phi, LoRA).
        """
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"]:
            raise ValueError(
                "use_reentrant=True is not supported: reentrant checkpointing drops the gradients of step "
                "sizes, a learned Phi and the LoRA factors; leave use_reentrant at False"
            )
        if denoiser:
            unable = [type(d).__name__ for d in self.denoisers if not d.supports_gradient_checkpointing]
            if unable:
                raise ValueError(
                    f"{unable[0]} cannot checkpoint inside the denoiser (no per-level recompute); use "
                    "denoiser=False (stage checkpointing works with every denoiser)"
                )
        for module in self.denoisers:
            if denoiser:
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            elif module.supports_gradient_checkpointing:
                module.activation_checkpointing_disable()
        self._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every stage's activations again (the default)."""
        for module in self.denoisers:
            if module.supports_gradient_checkpointing:
                module.activation_checkpointing_disable()
        self.gradient_checkpointing = False

    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def checkpoints_denoiser(self) -> bool:
        """Whether the denoiser recomputes level by level too (``..._enable(denoiser=True)``)."""
        return any(getattr(m, "gradient_checkpointing", False) for d in self.denoisers for m in d.modules())

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
        for k in range(self.config.num_stages):
            sigma = None if sigmas is None else sigmas[k].expand(x.shape[0])
            if recompute:
                x = self._gradient_checkpointing_func(
                    self._stage, task, k, x, measurement, sigma, adapter_set
                )
            else:
                x = self._stage(task, k, x, measurement, sigma, adapter_set)
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

    # ------------------------------------------------------------------ restoration entry point
    def _validated_measurement(self, measurement: Any) -> tuple[Tensor, bool]:
        if not isinstance(measurement, Tensor):
            raise TypeError(f"measurement must be a torch.Tensor, got {type(measurement).__name__}")
        if not measurement.is_floating_point():
            raise TypeError(
                f"measurement must be a floating-point tensor (float32/float64), got {measurement.dtype}; "
                "convert it with .float() (and scale integer images to [0, 1])"
            )
        physics = self.physics
        try:
            physics.check_measurement(measurement)
            batched = True
        except ValueError as batched_error:
            try:
                physics.check_measurement(measurement.unsqueeze(0))
            except ValueError:
                raise ValueError(
                    f"measurement of shape {tuple(measurement.shape)} fits neither a batch nor a single "
                    f"measurement: {batched_error}"
                ) from batched_error
            batched = False
        for name, bad in (("NaN", torch.isnan(measurement)), ("Inf", torch.isinf(measurement))):
            if bad.any():
                raise ValueError(
                    f"measurement contains {int(bad.sum())} {name} value(s), the first at index "
                    f"{_first_bad_index(bad)} of shape {tuple(measurement.shape)}; expected finite values"
                )
        return (measurement if batched else measurement.unsqueeze(0)), batched

    def restore(
        self,
        measurement: Tensor,
        image_size: tuple[int, int] | None = None,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Restore images from measurements: the user entry point.

        Accepts one measurement or a batch (layout: the active physics' ``check_measurement``), checks
        shape, dtype and finiteness, runs in eval mode under ``torch.inference_mode`` (no graph, no
        stage outputs kept: memory is one stage's activations), in lorun mode with the K per-stage
        weights materialised (the fastest merge mode), and puts back the previous train/eval and merge
        modes afterwards. Returns ``(B, C, H, W)``, or ``(C, H, W)`` for a single measurement, on the
        measurement's device and dtype.

        ``tile_size``: restore in windows of about this many image pixels a side (rounded down to whole
        measurement cells: blocks of block CS, low-resolution pixels of SR), each with a halo of
        ``tile_overlap`` pixels (default: a quarter of the tile) that is computed and dropped, so peak
        memory is that of one window (docs/inference.md). Only operators whose ``grid_factor`` is set
        act locally enough for this (block CS, SR); others raise ``ValueError``.

        ``autocast_dtype=torch.bfloat16`` (opt-in): run the denoisers under ``torch.autocast`` in bf16, the
        physics staying fp32; refused where the device does not compute bf16 natively (CPUs without
        AVX512-BF16/AMX emulate it far slower than fp32). Its accuracy cost is measured in
        docs/inference.md.

        ``image_size=(H, W)``: the size of the original image(s). A block-CS measurement does not record
        it: images whose sides are not multiples of the block were zero-padded, and without
        ``image_size`` the estimate of the padded grid ``(ceil(H/b)*b, ceil(W/b)*b)`` is returned (crop
        it yourself, or pass ``image_size``). A size that cannot have produced the measurement raises
        ``ValueError``. Other physics determine the size from the measurement.
        """
        y, batched = self._validated_measurement(measurement)
        tiles = None if tile_size is None else self._tile_cells(tile_size, tile_overlap)
        reference = next(self.parameters())
        _check_autocast_dtype(autocast_dtype, reference.device)
        y = y.to(device=reference.device, dtype=reference.dtype)
        was_training = self.training
        lorun = self._active_set is not None and not self._adapters_disabled
        previous_merge = get_merge_mode(self.denoisers[0]) if lorun else None
        try:
            self.eval()
            if lorun:
                set_merge_mode(self.denoisers[0], "materialized")
            with (
                torch.inference_mode(),
                torch.autocast(
                    reference.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                ),
            ):
                if tiles is None:
                    images = self(y, image_size=image_size).images
                else:
                    images = self._restore_tiled(y, image_size, *tiles)
        finally:
            if lorun:
                set_merge_mode(self.denoisers[0], previous_merge)
            self.train(was_training)
        # a copy made outside inference mode is an ordinary tensor the caller may use with autograd
        images = images.to(device=measurement.device, dtype=measurement.dtype).clone()
        return images if batched else images[0]

    def _tile_cells(self, tile_size: int, tile_overlap: int | None) -> tuple[int, int, int]:
        """``(grid_factor, tile, overlap)`` in measurement cells, or ``ValueError`` for a bad request."""
        physics = self.physics
        factor = physics.grid_factor
        if factor is None:
            raise ValueError(
                f"tiled restore needs an operator that acts locally on a grid; {type(physics).__name__} "
                "does not (its grid_factor is None): call restore() without tile_size"
            )
        overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        for name, value, least in (("tile_size", tile_size, factor), ("tile_overlap", overlap, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least} (pixels), got {value!r}")
        return factor, tile_size // factor, -(-overlap // factor)

    def _restore_tiled(
        self, y: Tensor, image_size: tuple[int, int] | None, factor: int, tile: int, overlap: int
    ) -> Tensor:
        image_shape = tuple(self.physics.image_shape(tuple(y.shape)))
        if image_size is not None:
            _check_image_size(self.physics, y, torch.empty(image_shape, device="meta"), image_size)
        images = restore_in_tiles(lambda window: self(window).images, y, image_shape, factor, tile, overlap)
        return _crop(images, image_size)

    # ------------------------------------------------------------------ adapter sets (phase 2)
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
                f"task.safetensors of adapter set {name!r} does not fit its physics "
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

    # ------------------------------------------------------------------ Hub
    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Push the clean phase-1 backbone and its model card in one commit (``hub.push_backbone``)."""
        return hub.push_backbone(self, repo_id, **kwargs)

    def push_adapter_set(self, repo_id: str, set_name: str | None = None, **kwargs: Any) -> Any:
        """Push adapter set ``set_name`` (default: the active one) to ``<repo_id>/<set_name>/``.

        One commit with a regenerated model card (:func:`lorun_peft.hub.push_adapter_set`).
        """
        return hub.push_adapter_set(self, repo_id, set_name, **kwargs)

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
        shipped = hub.shipped_copy(pretrained_model_name_or_path, kwargs.get("revision"))
        if shipped is not None:  # lorun-peft/<task>-backbone: the package's copy when the Hub has none
            pretrained_model_name_or_path = shipped
            kwargs.pop("revision", None)
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "LoRunModel loads safetensors weights only (use_safetensors=False would unpickle)"
            )
        kwargs["use_safetensors"] = True
        local = Path(str(pretrained_model_name_or_path)).expanduser()
        if not local.exists() and not hub.is_hub_id(pretrained_model_name_or_path):
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path} does not exist: expected a folder saved with "
                "save_pretrained (config.json + model.safetensors) or a Hub repo id 'owner/name'"
            )
        has_weights = (local / SAFE_WEIGHTS_NAME).is_file() or (local / SAFE_WEIGHTS_INDEX_NAME).is_file()
        if local.is_dir() and not has_weights:
            pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(
                p.name for p in local.glob("*.pt*")
            )
            raise ValueError(
                f"{local} has no {SAFE_WEIGHTS_NAME}"
                + (f" (only {', '.join(pickled)}: pickle files are never loaded)" if pickled else "")
                + "; expected a LoRunModel saved with save_pretrained (safetensors weights)"
            )
        if local.is_dir():
            _check_backbone_folder(local, verify_integrity)
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

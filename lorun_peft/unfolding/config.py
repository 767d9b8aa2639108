"""Configuration of a LoRun deep unfolding network (``model_type="lorun"``).

A :class:`LoRunConfig` is everything needed to rebuild the structure of a :class:`~.model.LoRunModel`
backbone: the physics operator (its ``get_config()`` dict), the denoiser (its ``config.to_dict()``,
any lorun_peft denoiser family), the number of stages K, the unfolded algorithm and the mode.
Tensors (denoiser weights, a learned CS matrix, masks, step parameters) live in the safetensors file.
Only the backbone modes ``block`` and ``shared`` are ever stored: ``lorun`` is a shared backbone with
adapter sets attached at run time, and adapter sets are saved apart.
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from lorun_peft.integrity import BACKBONE_CHECKSUM_KEY

from .steps import ALGORITHMS

BACKBONE_MODES = ("block", "shared")


@strict
class LoRunConfig(PreTrainedConfig):
    """Config of :class:`~lorun_peft.unfolding.LoRunModel`.

    physics: ``LinearOperator.get_config()`` of the phase-1 operator (``{"type": "cs", ...}``).
    denoiser: ``config.to_dict()`` of the denoiser (must contain ``model_type``).
    num_stages: K, the number of unfolded stages.
    algorithm: ``"pgd"`` (eq. 5-7), ``"hqs"`` (eq. 9-11) or ``"gap"`` (HQS on GAP's accumulated
        measurement, :mod:`~lorun_peft.unfolding.steps`).
    mode: ``"block"`` (K independent denoisers, Block-K) or ``"shared"`` (one denoiser for all stages,
        Block-K-share, phase 1 of LoRun). ``lorun`` is reached by adding adapter sets to a shared model.
    step_init: initial value of every ``rho_k``/``mu_k`` and ``lambda_k`` (the paper uses 0.5).
    """

    model_type = "lorun"

    physics: dict | None = None
    denoiser: dict | None = None
    num_stages: int = 9
    algorithm: str = "pgd"
    mode: str = "shared"
    step_init: float = 0.5

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.pop(BACKBONE_CHECKSUM_KEY, None)  # the saved weights' digests: checked at load, not a setting
        if isinstance(self.num_stages, bool) or not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.mode == "lorun":
            raise ValueError(
                "mode 'lorun' is not a stored mode: build or load a 'shared' backbone, then call "
                "add_stage_adapters(...) or load_adapter(...) on it"
            )
        if self.mode not in BACKBONE_MODES:
            raise ValueError(f"mode must be one of {BACKBONE_MODES}, got {self.mode!r}")
        if (
            isinstance(self.step_init, bool)
            or not isinstance(self.step_init, (int, float))
            or not math.isfinite(self.step_init)
            or self.step_init <= 0
        ):
            raise ValueError(f"step_init must be a finite positive number, got {self.step_init!r}")
        if self.physics is not None and "type" not in self.physics:
            raise ValueError("physics must be a LinearOperator.get_config() dict with a 'type' key")
        if self.denoiser is not None and "model_type" not in self.denoiser:
            raise ValueError("denoiser must be a denoiser config.to_dict() with a 'model_type' key")
        super().__post_init__(**kwargs)

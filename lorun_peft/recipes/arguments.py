"""The options every training recipe shares (data, model, phase) and ``--smoke``.

The task's own options are its spec's ``arguments`` dataclass (:mod:`lorun_peft.tasks`); the training
options are :class:`~lorun_peft.training.UnfoldingTrainingConfig`. :func:`parse_training_args` parses all
four with ``HfArgumentParser``, as transformers' example scripts do.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from typing import Any

from lorun_peft.data.transforms import PatchSize
from lorun_peft.denoisers import DENOISER_FAMILIES
from lorun_peft.tasks import TaskSpec, get_task
from lorun_peft.unfolding.steps import ALGORITHMS

__all__ = [
    "ADAPTER_INITS",
    "MODES",
    "SCRIPT_TRAINING_DEFAULTS",
    "SMOKE",
    "DataArguments",
    "ModelArguments",
    "apply_smoke",
    "parse_training_args",
]

MODES = ("shared", "block", "lorun")
#: ``--adapter_init`` choices -> StageLoRAConfig.init_lora_weights.
ADAPTER_INITS = {"gaussian": "gaussian", "kaiming": True}
#: The example scripts' training defaults where they differ from UnfoldingTrainingConfig's: the fastest
#: accurate setting measured by benchmarks/bench_training_speed.py (docs/training.md): bf16 autocast
#: where the CPU/GPU computes bf16 natively (fp32 elsewhere, logged) and channels_last convolutions.
#: A checkpoint every 500 steps (transformers' Trainer default), so a default run can be resumed.
SCRIPT_TRAINING_DEFAULTS = {"mixed_precision": "auto", "channels_last": True, "checkpoint_every": 500}
#: What ``--smoke`` shrinks to (upper bounds: smaller values given on the command line are kept).
SMOKE = {"max_steps": 2, "batch_size": 2, "num_stages": 2, "width": 4, "depth": 2, "max_train_images": 2}


@dataclass
class DataArguments:
    """Where the clean training data comes from and how patches are cut."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Data root (default: $LORUN_DATA_DIR or <repo>/../shared/data when it exists)."},
    )
    train_data: str | None = field(
        default=None,
        metadata={
            "help": "Training images: a folder, a Hub dataset id, or (CASSI) a folder or file of .npz/.mat "
            "cubes. Default: the task's (Train400, BSDS500_train200, CASSI/cubes/stuffed_toys.npz) under "
            "data_dir."
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Optional test folder scored every eval_every steps and at the end (e.g. Set11)."},
    )
    patch_size: int = field(
        default=64,
        metadata={
            "help": "Side of the random training crops (CASSI: their width when --patch_height is set)."
        },
    )
    patch_height: int | None = field(
        default=None,
        metadata={
            "help": "CASSI: height of non-square crops of width --patch_size, e.g. --patch_size 256 "
            "--patch_height 32, full-width strips that keep a 256-wide scene's band overlap at an eighth "
            "of its pixels (docs/tasks_cassi.md). Default: square crops."
        },
    )
    patches_per_image: int = field(default=1, metadata={"help": "Crops per image per epoch."})
    max_train_images: int | None = field(default=None, metadata={"help": "Use only the first N images."})
    max_eval_images: int | None = field(default=None, metadata={"help": "Score only the first N test items."})

    def __post_init__(self) -> None:
        if self.patch_size < 1 or (self.patch_height is not None and self.patch_height < 1):
            raise ValueError(
                f"--patch_size and --patch_height must be >= 1, got {self.patch_size} and {self.patch_height}"
            )

    @property
    def patch(self) -> PatchSize:
        """The training crop: ``patch_size`` (square) or ``(patch_height, patch_size)``."""
        if self.patch_height is None or self.patch_height == self.patch_size:
            return self.patch_size
        return (self.patch_height, self.patch_size)


@dataclass
class ModelArguments:
    """The unfolding network, the phase and where its result goes."""

    mode: str = field(
        default="shared",
        metadata={
            "help": "shared: phase 1 (Block-K-share), saves a backbone; block: Block-K, saves a backbone; "
            "lorun: phase 2 on --backbone, saves an adapter set."
        },
    )
    backbone: str | None = field(
        default=None, metadata={"help": "Phase-1 backbone (folder or Hub id) for --mode lorun."}
    )
    warm_start: str | None = field(
        default=None,
        metadata={
            "help": "A further training leg with a new schedule. --mode shared/block: start from this saved "
            "model (folder or Hub id: its denoiser, Phi, steps) instead of a fresh one. --mode lorun: start "
            "the set from this saved adapter set (its folder, or a Hub id/folder holding <set>/) on "
            "--backbone instead of fresh adapters: its K adapters, Phi and steps."
        },
    )
    adapter_set_name: str | None = field(
        default=None,
        metadata={
            "help": "Name of the adapter set (default: ratio-25, x2-k1, mask-<bands> ... from the task)."
        },
    )
    denoiser: str = field(
        default="unet",
        metadata={"help": "unet | transformer | resunet | ssr (CASSI) | cppnet (CS): the stage denoiser."},
    )
    width: int | None = field(
        default=None, metadata={"help": "Denoiser width (U-Net base_channels; default: the family's)."}
    )
    depth: int | None = field(default=None, metadata={"help": "U-Net levels (default: the family's, 3)."})
    noise_level_map: bool = field(
        default=False, metadata={"help": "Feed each stage's noise level sigma_k to the denoiser."}
    )
    identity_init: bool = field(
        default=False,
        metadata={
            "help": "Phase 1: start the denoiser as the identity (its output layer at zero), so every stage "
            "starts as its data step alone; much faster for CASSI (docs/denoisers.md)."
        },
    )
    num_stages: int = field(default=9, metadata={"help": "K, the number of unfolded stages (paper: 9)."})
    algorithm: str | None = field(
        default=None,
        metadata={
            "help": "pgd | hqs | gap (HQS on GAP's accumulated measurement) (default: the task's: PGD for CS "
            "and SR, HQS for CASSI)."
        },
    )
    step_init: float = field(default=0.5, metadata={"help": "Initial rho_k/mu_k and lambda_k (paper: 0.5)."})
    gamma: float = field(default=10.0, metadata={"help": "LoRA rank factor of eq. 12, percent (paper: 10)."})
    adapter_init: str = field(
        default="gaussian",
        metadata={
            "help": "Phase 2: init of each lora_A, gaussian (std 1/r, the paper's) | kaiming (PEFT's "
            "default); lora_B starts at 0 either way, so phase 2 starts exactly at the backbone."
        },
    )
    train_adapters: bool = field(
        default=True,
        metadata={
            "help": "Phase 2: train the stage adapters. False trains only the set's task parameters "
            "(step sizes, a learned Phi) with the adapters left at 0: an ablation of what LoRA adds."
        },
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the backbone (phase 1) or adapter set (phase 2) to the Hub."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo id for --push_to_hub (default: the output folder's name)."}
    )
    smoke: bool = field(
        default=False,
        metadata={
            "help": "Tiny run for checks: K<=2, width 4, 2 steps, batch 2, small patches, 2 images; uses the "
            "shipped sample images (a synthetic cube and mask for CASSI) when no data is found."
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.denoiser not in DENOISER_FAMILIES:
            raise ValueError(f"--denoiser must be one of {tuple(DENOISER_FAMILIES)}, got {self.denoiser!r}")
        if self.adapter_init not in ADAPTER_INITS:
            raise ValueError(
                f"--adapter_init must be one of {tuple(ADAPTER_INITS)}, got {self.adapter_init!r}"
            )
        if self.mode == "lorun" and not self.backbone:
            raise ValueError("--mode lorun needs --backbone DIR (the phase-1 model saved by --mode shared)")
        if self.mode != "lorun" and self.backbone:
            raise ValueError(f"--backbone is only used with --mode lorun, got --mode {self.mode}")
        if self.algorithm is not None and self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")


def apply_smoke(
    spec: TaskSpec, data: DataArguments, model: ModelArguments, training: Any
) -> tuple[DataArguments, ModelArguments, Any]:
    """``--smoke``: cap steps, batch, K, width, patch size and image count (smaller given values stay)."""
    if not model.smoke:
        return data, model, training

    def cap(value: int | None, limit: int) -> int:
        return limit if value is None else min(value, limit)

    data = replace(
        data,
        patch_size=spec.smoke_patch_size,
        patch_height=None if data.patch_height is None else min(data.patch_height, spec.smoke_patch_size),
        max_train_images=cap(data.max_train_images, SMOKE["max_train_images"]),
        max_eval_images=cap(data.max_eval_images, SMOKE["max_train_images"]),
    )
    model = replace(
        model,
        num_stages=cap(model.num_stages, SMOKE["num_stages"]),
        width=cap(model.width, SMOKE["width"]),
        depth=cap(model.depth, SMOKE["depth"]),
    )
    training = replace(
        training,
        max_steps=cap(training.max_steps, SMOKE["max_steps"]),
        batch_size=cap(training.batch_size, SMOKE["batch_size"]),
        log_every=1,
        show_progress=False,
    )
    return data, model, training


def parse_training_args(task: str | TaskSpec, argv: list[str] | None = None, description: str | None = None):
    """Parse ``argv`` into ``(task arguments, DataArguments, ModelArguments, UnfoldingTrainingConfig)``."""
    from transformers import HfArgumentParser

    from lorun_peft.help import HelpFormatter
    from lorun_peft.training import UnfoldingTrainingConfig

    spec = get_task(task)
    parser = HfArgumentParser(
        (spec.arguments, DataArguments, ModelArguments, UnfoldingTrainingConfig),
        description=description,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(**SCRIPT_TRAINING_DEFAULTS)
    if not spec.strip_patches:  # CASSI's strips only: other scripts refuse the option, so --help hides it
        for action in parser._actions:
            if action.dest == "patch_height":
                action.help = argparse.SUPPRESS
    parsed = parser.parse_args_into_dataclasses(args=argv)
    data = parsed[1]
    if data.patch_height is not None and not spec.strip_patches:
        raise ValueError(
            f"--patch_height is for CASSI's full-width strips; the {spec.name} task trains on square crops "
            "(drop --patch_height, set --patch_size)"
        )
    return parsed

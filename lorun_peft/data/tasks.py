"""Task recipes for CS, SR and CASSI: argument dataclasses, physics, data and models built from them.

The three example training scripts (``examples/train_{cs,sr,cassi}.py``), ``examples/evaluate.py`` and a
future ``lorun`` training command share this module, so the scripts stay a few lines long. It turns
``HfArgumentParser`` dataclasses (:class:`TaskArguments`, :class:`DataArguments`, :class:`ModelArguments`,
plus the library's :class:`~lorun_peft.training.UnfoldingTrainingConfig`) into a physics operator (CS
ratio, SR kernel K1..K12 and scale from ``kernels_12.mat``, a CASSI mask file), clean training patches
(image folders or Hub datasets through ``datasets``, hyperspectral cubes resampled to the 28 KAIST bands),
a denoiser, and runs one training phase with :func:`run_training`: phase 1 (``--mode shared|block``)
saves a backbone, phase 2 (``--mode lorun --backbone DIR``) saves an adapter set. ``--smoke`` shrinks
everything and falls back to the shipped sample images (and a synthetic cube and mask) when no data is
found. See docs/tasks_cs.md, docs/tasks_sr.md and docs/tasks_cassi.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorun_peft.data.cubes import CAVE_WAVELENGTHS_31, KAIST_WAVELENGTHS_28, CubePatchDataset
from lorun_peft.data.images import RandomPatchDataset, load_image_folder
from lorun_peft.data.kernel_draws import RandomKernels
from lorun_peft.data.mask_crops import RandomMaskCrops
from lorun_peft.data.samples import load_sample_image
from lorun_peft.io import read_json_object, write_atomic

TASKS = ("cs", "sr", "cassi")
DENOISERS = ("unet", "transformer", "resunet", "ssr", "cppnet")
MODES = ("shared", "block", "lorun")
#: ``--adapter_init`` choices -> StageLoRAConfig.init_lora_weights.
ADAPTER_INITS = {"gaussian": "gaussian", "kaiming": True}
PHI_INITS = ("backbone", "random")
#: The example scripts' training defaults where they differ from UnfoldingTrainingConfig's: the fastest
#: accurate setting measured by benchmarks/bench_training_speed.py (docs/training.md): bf16 autocast
#: where the CPU/GPU computes bf16 natively (fp32 elsewhere, logged) and channels_last convolutions.
#: A checkpoint every 500 steps (transformers' Trainer default), so a default run can be resumed.
SCRIPT_TRAINING_DEFAULTS = {"mixed_precision": "auto", "channels_last": True, "checkpoint_every": 500}

#: Default data, relative to the data root (``<repo>/../shared/data`` or ``$LORUN_DATA_DIR``).
#: CASSI trains on stuffed_toys only: cloth, the other cube, is the test scene.
DEFAULT_TRAIN_DATA = {"cs": "Train400", "sr": "BSDS500_train200", "cassi": "CASSI/cubes/stuffed_toys.npz"}
DEFAULT_TEST_DATA = {"cs": "Set11", "sr": "Set5", "cassi": "CASSI/cubes/cloth.npz"}
DEFAULT_MASK = "CASSI/simulation/mask.mat"
DEFAULT_KERNELS = "kernels/kernels_12.mat"

#: The unfolded algorithm the paper uses per task (CS and SR: PGD, eq. 5-7; CASSI: HQS, eq. 9-11).
PAPER_ALGORITHM = {"cs": "pgd", "sr": "pgd", "cassi": "hqs"}
#: Image channels per task (CASSI: the band count, set by ``--bands``).
TASK_CHANNELS = {"cs": 1, "sr": 3}
#: The physics ``type`` of each task, as stored in a backbone or adapter set config.
PHYSICS_TASK = {"block_cs": "cs", "blur_downsample": "sr", "cassi": "cassi"}

#: ``--kernel all``: an SR adapter set trained on a kernel drawn from the 12 for every batch.
ALL_KERNELS = "all"

#: Side of the synthetic CASSI mask of ``--smoke`` runs without a mask file (evaluation rebuilds it).
SMOKE_MASK_SIZE = 64

#: What ``--smoke`` shrinks to (upper bounds: smaller values given on the command line are kept).
SMOKE = {
    "max_steps": 2,
    "batch_size": 2,
    "num_stages": 2,
    "width": 4,
    "depth": 2,
    "max_train_images": 2,
    "patch_size": {"cs": 32, "sr": 36, "cassi": 32},
}


def repo_root() -> Path:
    """The folder holding the ``lorun_peft`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parents[2]


def default_data_dir() -> Path | None:
    """``$LORUN_DATA_DIR`` if set, else ``<repo>/../shared/data`` if it exists, else ``None``."""
    env = os.environ.get("LORUN_DATA_DIR")
    if env:
        return Path(env)
    candidate = (repo_root() / ".." / "shared" / "data").resolve()
    return candidate if candidate.is_dir() else None


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


# ---------------------------------------------------------------------------------------------- arguments
@dataclass
class TaskArguments:
    """The degradation of a task. Only the fields of the script's task are used."""

    ratio: float = field(default=0.25, metadata={"help": "CS: sampling ratio in (0, 1] (paper: 0.01-0.25)."})
    block_size: int = field(default=32, metadata={"help": "CS: block side b (32; 33 for ISTA-Net)."})
    phi_matrix: str | None = field(
        default=None,
        metadata={
            "help": "CS: a fixed ISTA-Net sampling matrix phi_0_{R}_1089.mat (sets block 33 and the "
            "ratio); default: a learned Phi (the paper's setting)."
        },
    )
    kernel: str = field(
        default="K1",
        metadata={
            "help": "SR: blur kernel K1..K12 of kernels_12.mat (1-4 isotropic, 5-8 aniso, 9-12 motion), or "
            "'all': a kernel drawn from the 12 for every batch (one set for every kernel, as USRNet)."
        },
    )
    scale: int = field(default=2, metadata={"help": "SR: scale factor s (2, 3 or 4)."})
    kernels_file: str | None = field(
        default=None,
        metadata={
            "help": "SR: path of kernels_12.mat (default: <data_dir>/kernels/kernels_12.mat; synthetic "
            "stand-ins, with a warning, when it is absent)."
        },
    )
    mask: str | None = field(
        default=None,
        metadata={
            "help": "CASSI: coded aperture .mat (variable 'mask', H x W; default: "
            "<data_dir>/CASSI/simulation/mask.mat). Patches smaller than the mask use a random mask crop."
        },
    )
    dispersion_step: int = field(default=2, metadata={"help": "CASSI: dispersion in pixels per band."})
    bands: int = field(
        default=28,
        metadata={
            "help": "CASSI: band count. 28 resamples cubes that store their wavelengths (CAVE: 31 bands, "
            "400-700 nm) to the KAIST/TSA wavelengths; other counts must match the files."
        },
    )


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
            "cubes. Default: Train400 (CS), BSDS500_train200 (SR), CASSI/cubes (CASSI) under data_dir."
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Optional test folder scored every eval_every steps and at the end (e.g. Set11)."},
    )
    patch_size: int = field(default=64, metadata={"help": "Side of the random training crops."})
    patches_per_image: int = field(default=1, metadata={"help": "Crops per image per epoch."})
    max_train_images: int | None = field(default=None, metadata={"help": "Use only the first N images."})
    band_gain: float = field(
        default=0.0,
        metadata={
            "help": "CASSI: strength s of the random band-wise brightness (a smooth gain in [1-s, 1+s] "
            "across the bands times a brightness in [1-s, 1]); 0 turns it off."
        },
    )
    rgb_lift_data: str | None = field(
        default=None,
        metadata={
            "help": "CASSI: a folder of RGB images (e.g. BSDS500_train200) lifted to spectra by a linear map "
            "fitted on the training cubes, mixed into the training patches (see --rgb_lift_fraction)."
        },
    )
    rgb_lift_fraction: float = field(
        default=0.5, metadata={"help": "CASSI: share of training patches that are lifted RGB images."}
    )
    max_eval_images: int | None = field(default=None, metadata={"help": "Score only the first N test items."})


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
            "help": "--mode shared/block: start from this saved model (folder or Hub id) instead of a fresh "
            "one, with a new schedule: a further training leg of a backbone (its denoiser, Phi, steps)."
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
    num_stages: int = field(default=9, metadata={"help": "K, the number of unfolded stages (paper: 9)."})
    algorithm: str | None = field(
        default=None, metadata={"help": "pgd | hqs (default: the paper's: PGD for CS and SR, HQS for CASSI)."}
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
    phi_init: str = field(
        default="backbone",
        metadata={
            "help": "CS phase 2 at a new ratio: backbone (the new learned Phi starts from the backbone's, "
            "via its SVD: lorun_peft.physics.derive_sampling_matrix) | random (N(0, 1/b^2) entries)."
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
        if self.denoiser not in DENOISERS:
            raise ValueError(f"--denoiser must be one of {DENOISERS}, got {self.denoiser!r}")
        if self.adapter_init not in ADAPTER_INITS:
            raise ValueError(
                f"--adapter_init must be one of {tuple(ADAPTER_INITS)}, got {self.adapter_init!r}"
            )
        if self.mode == "lorun" and not self.backbone:
            raise ValueError("--mode lorun needs --backbone DIR (the phase-1 model saved by --mode shared)")
        if self.mode != "lorun" and self.backbone:
            raise ValueError(f"--backbone is only used with --mode lorun, got --mode {self.mode}")
        if self.mode == "lorun" and self.warm_start:
            raise ValueError(
                "--warm_start continues a backbone (--mode shared/block); phase 2 uses --backbone"
            )
        if self.phi_init not in PHI_INITS:
            raise ValueError(f"--phi_init must be one of {PHI_INITS}, got {self.phi_init!r}")
        if self.algorithm is not None and self.algorithm not in ("pgd", "hqs"):
            raise ValueError(f"--algorithm must be 'pgd' or 'hqs', got {self.algorithm!r}")


def apply_smoke(
    task: str, data: DataArguments, model: ModelArguments, training: Any
) -> tuple[DataArguments, ModelArguments, Any]:
    """``--smoke``: cap steps, batch, K, width, patch size and image count (smaller given values stay)."""
    if not model.smoke:
        return data, model, training

    def cap(value: int | None, limit: int) -> int:
        return limit if value is None else min(value, limit)

    data = replace(
        data,
        patch_size=SMOKE["patch_size"][task],
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


# ---------------------------------------------------------------------------------------------- physics
def kernel_index(kernel: str | int) -> int:
    """0-based index of ``"K1"`` .. ``"K12"`` (or 1..12) in ``kernels_12.mat``."""
    match = re.fullmatch(r"[kK]?(\d+)", str(kernel).strip())
    if match is None or not 1 <= int(match.group(1)) <= 12:
        raise ValueError(f"kernel must be K1..K12 (the 12 kernels of kernels_12.mat), got {kernel!r}")
    return int(match.group(1)) - 1


def is_all_kernels(kernel: str | int) -> bool:
    """Whether ``--kernel`` asks for every kernel of kernels_12.mat (``all``)."""
    return str(kernel).strip().lower() == ALL_KERNELS


def _data_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """Roots searched for default data files: ``--data_dir``, ``$LORUN_DATA_DIR``, ``../shared/data``."""
    roots = [Path(data_dir)] if data_dir else []
    fallback = default_data_dir()
    return roots + ([fallback] if fallback is not None and fallback not in roots else [])


def load_sr_kernels(
    kernels_file: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    allow_synthetic: bool = False,
) -> tuple[Tensor, str]:
    """The 12 kernels ``(12, 25, 25)`` of ``kernels_file`` and where they came from.

    Without ``kernels_file``: ``<data_dir>/kernels/kernels_12.mat`` (``data_dir`` = ``--data_dir``, then
    ``$LORUN_DATA_DIR`` or ``<repo>/../shared/data``). A missing file is an error, except with
    ``allow_synthetic`` (``--smoke``), which uses the synthetic stand-ins of
    :func:`~lorun_peft.physics.synthetic_kernels_12` with a loud warning: K5..K12 differ from the published
    kernels, so a model trained on them is not the paper's.
    """
    from lorun_peft.physics import load_kernels_12, synthetic_kernels_12

    if kernels_file is not None:
        path = Path(kernels_file)
        if not path.is_file():
            raise FileNotFoundError(f"kernels file {path} does not exist (expected USRNet's kernels_12.mat)")
        return load_kernels_12(path), str(path)
    looked = [root / DEFAULT_KERNELS for root in _data_roots(data_dir)]
    for path in looked:
        if path.is_file():
            return load_kernels_12(path), str(path)
    where = ", ".join(str(p) for p in looked) or f"<data_dir>/{DEFAULT_KERNELS}"
    if not allow_synthetic:
        raise FileNotFoundError(
            f"kernels_12.mat not found (looked for {where}): pass --kernels_file PATH or --data_dir DIR "
            "holding kernels/kernels_12.mat (--smoke falls back to synthetic stand-in kernels)"
        )
    message = (
        f"kernels_12.mat not found (looked for {where}): using the SYNTHETIC stand-in kernels of "
        "lorun_peft.physics.synthetic_kernels_12, NOT the published USRNet kernels (K5..K12 differ); "
        "numbers are not comparable with the paper. Pass --kernels_file to use the real ones."
    )
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
    return synthetic_kernels_12(), "synthetic_kernels_12"


def load_sr_kernel(
    kernel: str | int, kernels_file: str | os.PathLike | None = None, **where: Any
) -> tuple[Tensor, str]:
    """Kernel ``K1..K12`` as a ``(25, 25)`` tensor and where it came from (see :func:`load_sr_kernels`)."""
    index = kernel_index(kernel)
    kernels, source = load_sr_kernels(kernels_file, **where)
    return kernels[index], source


def synthetic_mask(size: int | tuple[int, int], seed: int = 0) -> Tensor:
    """A random coded aperture ``(H, W)`` with values in [0.05, 1] (smoke runs without a mask file)."""
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)
    return 0.05 + 0.95 * torch.rand(height, width, generator=generator)


def crop_mask(mask: Tensor, size: int, seed: int = 0) -> Tensor:
    """A random ``size x size`` crop of an ``(H, W)`` mask (the whole mask when it is that size)."""
    height, width = mask.shape
    if size > height or size > width:
        raise ValueError(
            f"patch size {size} is larger than the {height}x{width} CASSI mask; use --patch_size <= "
            f"{min(height, width)} or a larger mask"
        )
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return mask[top : top + size, left : left + size].contiguous()


def resolve_mask(
    task_args: TaskArguments, smoke: bool, size: int, seed: int = 0, data_dir: str | os.PathLike | None = None
) -> tuple[Tensor, str]:
    """The CASSI mask named by ``--mask`` (or the default file), or a synthetic one for ``--smoke``."""
    from lorun_peft.physics import load_cassi_mask

    if task_args.mask is not None:
        path = Path(task_args.mask)
        if not path.is_file():
            raise FileNotFoundError(f"CASSI mask file {path} does not exist (expected a .mat with 'mask')")
        return load_cassi_mask(path), str(path)
    for root in _data_roots(data_dir):
        if (root / DEFAULT_MASK).is_file():
            return load_cassi_mask(root / DEFAULT_MASK), str(root / DEFAULT_MASK)
    if smoke:
        return synthetic_mask(size, seed), f"synthetic random mask {size}x{size} (seed {seed})"
    raise FileNotFoundError(
        f"no CASSI mask: pass --mask PATH.mat (or --data_dir holding {DEFAULT_MASK}); "
        "--smoke uses a random one"
    )


def build_physics(
    task: str,
    task_args: TaskArguments,
    patch_size: int,
    smoke: bool = False,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
):
    """The task's operator for training on ``patch_size`` crops, and a one-line description.

    CS: :class:`~lorun_peft.physics.BlockCS` (learned Phi, or the fixed ISTA-Net matrix of
    ``--phi_matrix``). SR: :class:`~lorun_peft.physics.BlurDownsample` with kernel ``--kernel`` and
    ``--scale``. CASSI: :class:`~lorun_peft.physics.CASSI` on a random ``patch_size`` crop of the mask
    (seeded by ``seed``; the whole mask when the patch has its size).
    """
    from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, load_ista_net_matrix

    _check_task(task)
    where = {"data_dir": data_dir, "allow_synthetic": smoke}
    if task == "cs":
        if task_args.phi_matrix:
            physics = load_ista_net_matrix(task_args.phi_matrix)
            return physics, f"block CS {physics.ratio:.0%}, fixed Phi from {task_args.phi_matrix}"
        physics = BlockCS(task_args.ratio, block_size=task_args.block_size, channels=1, learnable=True)
        return (
            physics,
            f"block CS {task_args.ratio:.0%}, {task_args.block_size}x{task_args.block_size}, learned Phi",
        )
    if task == "sr":
        if patch_size % task_args.scale:
            raise ValueError(
                f"--patch_size {patch_size} must be a multiple of --scale {task_args.scale} "
                f"(e.g. {patch_size - patch_size % task_args.scale})"
            )
        if is_all_kernels(task_args.kernel):
            kernels, source = load_sr_kernels(task_args.kernels_file, **where)
            physics = BlurDownsample(kernels[0], task_args.scale)
            return physics, f"SR x{task_args.scale}, a kernel of the 12 from {source} drawn per batch"
        kernel, source = load_sr_kernel(task_args.kernel, task_args.kernels_file, **where)
        physics = BlurDownsample(kernel, task_args.scale)
        return physics, f"SR x{task_args.scale}, kernel {task_args.kernel.upper()} from {source}"
    mask, source = resolve_mask(task_args, smoke, max(patch_size, SMOKE_MASK_SIZE), seed, data_dir)
    crop = crop_mask(mask, patch_size, seed)
    where = "whole mask"
    if crop.shape != mask.shape:
        where = f"a new random {patch_size}x{patch_size} crop per batch"
    physics = CASSI(crop, step=task_args.dispersion_step)
    return (
        physics,
        f"CASSI {task_args.bands} bands, step {task_args.dispersion_step}, mask {source} ({where})",
    )


def build_physics_sampler(
    task: str,
    task_args: TaskArguments,
    patch_size: int,
    smoke: bool = False,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> RandomMaskCrops | RandomKernels | None:
    """What to redraw in the operator before every batch, if anything.

    CASSI with a mask larger than the patches: a :class:`RandomMaskCrops` (a new crop per batch). SR with
    ``--kernel all``: a :class:`RandomKernels` over the 12 kernels. ``None`` otherwise.
    """
    if task == "sr" and is_all_kernels(task_args.kernel):
        kernels = load_sr_kernels(task_args.kernels_file, data_dir=data_dir, allow_synthetic=smoke)[0]
        return RandomKernels(kernels)
    if task != "cassi":
        return None
    mask, _ = resolve_mask(task_args, smoke, max(patch_size, SMOKE_MASK_SIZE), seed, data_dir)
    if tuple(mask.shape) == (patch_size, patch_size):
        return None
    return RandomMaskCrops(mask, patch_size)


def default_set_name(task: str, task_args: TaskArguments) -> str:
    """``ratio-25`` (CS), ``x2-k1`` (SR; ``x2`` for ``--kernel all``), ``mask-28`` (CASSI)."""
    if task == "cs":
        return f"ratio-{round(task_args.ratio * 100)}"
    if task == "sr" and is_all_kernels(task_args.kernel):
        return f"x{task_args.scale}"
    if task == "sr":
        return f"x{task_args.scale}-k{kernel_index(task_args.kernel) + 1}"
    return f"mask-{task_args.bands}"


# ---------------------------------------------------------------------------------------------- denoisers
def build_denoiser(
    name: str, channels: int, width: int | None = None, depth: int | None = None, **kwargs: Any
):
    """A fresh denoiser of family ``name`` for ``channels``-channel images (``kwargs`` go to its config)."""
    from lorun_peft import denoisers as d

    common = {"in_channels": channels, "out_channels": channels, **kwargs}
    if name == "unet":
        extra = {"base_channels": width} if width else {}
        return d.UNetDenoiser(d.UNetConfig(**common, **extra, **({"depth": depth} if depth else {})))
    if name == "transformer":
        heads = 2 if width is None or width % 2 == 0 else 1
        extra = {"hidden_channels": width, "num_heads": heads} if width else {}
        return d.TransformerDenoiser(d.TransformerConfig(**common, **extra))
    if name == "resunet":
        levels = depth or 4
        extra = {"channels": [width * 2**i for i in range(levels)]} if width else {}
        return d.ResUNetDenoiser(d.ResUNetConfig(**common, **extra))
    if name == "ssr":
        extra = {"base_channels": width} if width else {}
        return d.SSRDenoiser(d.SSRConfig(**common, **extra, **({"num_levels": depth} if depth else {})))
    if name == "cppnet":
        extra = {"base_channels": width} if width else {}
        levels = {"num_levels": max(2, depth)} if depth else {}
        return d.CPPNetDenoiser(d.CPPNetConfig(**common, **extra, **levels))
    raise ValueError(f"denoiser must be one of {DENOISERS}, got {name!r}")


def task_channels(task: str, task_args: TaskArguments) -> int:
    """Channels of the task's images: 1 (CS, gray), 3 (SR, RGB), ``--bands`` (CASSI)."""
    _check_task(task)
    return TASK_CHANNELS.get(task, task_args.bands)


# ---------------------------------------------------------------------------------------------- data
def _data_path(data: DataArguments, relative: str) -> Path | None:
    root = Path(data.data_dir) if data.data_dir else default_data_dir()
    if root is None:
        return None
    path = root / relative
    return path if path.exists() else None


def _data_files(path: Path) -> set[Path]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return {p.resolve() for p in files}


def report_split(task: str, data: DataArguments, train_text: str) -> None:
    """Print which data trains and which evaluates; warn when a file is in both (optimistic scores)."""
    print(f"train_{task}: training on {train_text}; evaluating on {data.eval_data or 'nothing'}", flush=True)
    train_path = Path(data.train_data) if data.train_data else _data_path(data, DEFAULT_TRAIN_DATA[task])
    if not data.eval_data or train_path is None:
        return
    shared = sorted(p.name for p in _data_files(train_path) & _data_files(Path(data.eval_data)))
    if shared:
        print(
            f"WARNING: {len(shared)} evaluation file(s) are also training data ({', '.join(shared[:5])}): "
            "the scores will be optimistic; pass --train_data without them",
            file=sys.stderr,
            flush=True,
        )


def cube_wavelengths(bands: int) -> tuple[float, ...]:
    """Band centres used for pseudo-colour and resampling: KAIST's 28, CAVE's 31, else 450-650 nm evenly."""
    if bands == 28:
        return KAIST_WAVELENGTHS_28
    if bands == 31:
        return CAVE_WAVELENGTHS_31
    return tuple(float(v) for v in np.linspace(450.0, 650.0, bands))


def synthetic_cube(image: Tensor, bands: int) -> Tensor:
    """A smooth ``(bands, H, W)`` cube in [0, 1] from an RGB image ``(3, H, W)``.

    Each pixel's spectrum is a mix of three Gaussian bumps (at 610, 540, 465 nm, 45 nm wide) weighted by
    its R, G, B values: real spatial structure and smooth spectra, for smoke runs without cubes.
    """
    from lorun_peft.data.spectral import gaussian_responses

    response = gaussian_responses(cube_wavelengths(bands))  # (bands, 3)
    cube = torch.einsum("bc,chw->bhw", response, image.to(torch.float64))
    return (cube / cube.max().clamp_min(1e-12)).to(torch.float32)


def smoke_items(task: str, bands: int = 28, size: int = 64, count: int = 2) -> list[tuple[str, Tensor]]:
    """``count`` centre crops of the shipped sample images (gray for CS, RGB for SR, synthetic cubes)."""
    names = ("camera", "astronaut", "coffee", "chelsea")[:count]
    items = []
    for name in names:
        image = load_sample_image(name, mode="L" if task == "cs" else "RGB")
        top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
        crop = image[:, top : top + size, left : left + size].contiguous()
        items.append((name, synthetic_cube(crop, bands) if task == "cassi" else crop))
    return items


def load_images(source: str | os.PathLike, channels: int) -> Any:
    """:func:`~lorun_peft.data.load_image_folder` on a local folder (its one split) or a Hub id."""
    return load_image_folder(str(source), split="train", channels=channels)


def build_train_source(
    task: str, task_args: TaskArguments, data: DataArguments, smoke: bool = False, seed: int = 0
) -> tuple[Any, str]:
    """The training patches (a ``torch`` dataset) and a description of where they come from.

    CS / SR: :func:`~lorun_peft.data.load_image_folder` (gray / RGB, every file decoded once so a corrupt
    one fails by name) wrapped in :class:`~lorun_peft.data.RandomPatchDataset` (random crops, 8 flips and
    rotations). CASSI: :class:`~lorun_peft.data.CubePatchDataset`, resampled to the 28 KAIST wavelengths
    when ``--bands 28`` and the files store theirs, else checked to have ``--bands`` bands.
    """
    _check_task(task)
    source = data.train_data
    path = Path(source) if source else _data_path(data, DEFAULT_TRAIN_DATA[task])
    if path is None:
        if smoke:
            items = smoke_items(task, task_args.bands, size=max(64, data.patch_size), count=2)
            tensors = [tensor for _, tensor in items]
            if task == "cassi":
                dataset = CubePatchDataset(tensors, data.patch_size, seed=seed)
            else:
                dataset = RandomPatchDataset(tensors, data.patch_size, data.patches_per_image, seed=seed)
            return dataset, "shipped sample images" + (" (synthetic cubes)" if task == "cassi" else "")
        raise FileNotFoundError(
            f"no training data: {DEFAULT_TRAIN_DATA[task]} not found under --data_dir or "
            "<repo>/../shared/data; "
            "pass --data_dir DIR or --train_data FOLDER (or --smoke to use the shipped sample images)"
        )
    if task == "cassi":
        dataset = CubePatchDataset(
            str(path),
            data.patch_size,
            KAIST_WAVELENGTHS_28 if task_args.bands == 28 and _stores_wavelengths(path) else None,
            seed=seed,
            patches_per_cube=data.patches_per_image,
            expected_bands=None if task_args.bands == 28 and _stores_wavelengths(path) else task_args.bands,
        )
        if data.max_train_images is not None:
            dataset.cubes, dataset.names = (
                dataset.cubes[: data.max_train_images],
                dataset.names[: data.max_train_images],
            )
        if dataset.bands != task_args.bands:
            raise ValueError(
                f"cubes in {path} have {dataset.bands} bands; expected --bands {task_args.bands}"
            )
        return _augment_cubes(dataset, task_args, data, seed, f"cubes {path}")
    images = load_images(path, TASK_CHANNELS[task])
    if data.max_train_images is not None:
        images = images.select(range(min(data.max_train_images, len(images))))
    dataset = RandomPatchDataset(
        images, data.patch_size, data.patches_per_image, seed=seed, cache_images=True
    )
    for index in range(len(images)):  # a crop larger than an image fails now, naming the file
        dataset[index * data.patches_per_image]
    return dataset, f"images {path}"


def _augment_cubes(
    dataset: CubePatchDataset, task_args: TaskArguments, data: DataArguments, seed: int, text: str
) -> tuple[Any, str]:
    """``--rgb_lift_data`` (lifted RGB patches mixed in) and ``--band_gain`` on top of the cube patches."""
    from lorun_peft.data.spectral import BandGainAugment, LiftedRGBPatches, MixedPatches, SpectralLift

    source: Any = dataset
    if data.rgb_lift_data:
        if not 0.0 < data.rgb_lift_fraction <= 1.0:
            raise ValueError(f"--rgb_lift_fraction must be in (0, 1], got {data.rgb_lift_fraction}")
        path = Path(data.rgb_lift_data)
        if not path.exists():
            raise FileNotFoundError(
                f"--rgb_lift_data {path} does not exist (expected a folder of RGB images)"
            )
        lift = SpectralLift.fit(dataset.cubes, cube_wavelengths(dataset.bands), seed=seed)
        images = load_images(path, 3)
        rgb = RandomPatchDataset(images, data.patch_size, seed=seed, cache_images=True)
        for index in range(len(images)):  # a crop larger than an image fails now, naming the file
            rgb[index]
        source = MixedPatches(dataset, LiftedRGBPatches(rgb, lift), data.rgb_lift_fraction, seed=seed)
        text += (
            f" + {data.rgb_lift_fraction:.0%} RGB images of {path} lifted to {dataset.bands} bands "
            f"(linear map fitted on the cubes, relative error {lift.fit_error:.3f})"
        )
    if data.band_gain:
        source = BandGainAugment(source, data.band_gain, seed=seed)
        text += f", band-wise brightness +-{data.band_gain:g}"
    return source, text


def _stores_wavelengths(path: Path) -> bool:
    from lorun_peft.data.cubes import read_cube_wavelengths

    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".mat")) if path.is_dir() else [path]
    )
    return bool(files) and all(read_cube_wavelengths(p) is not None for p in files)


# ---------------------------------------------------------------------------------------------- running
@dataclass
class TrainingSummary:
    """What :func:`run_training` did: written as ``run_summary.json`` in the output folder."""

    task: str
    mode: str
    output_dir: str
    saved: str
    physics: str
    data: str
    steps: int
    train_time_s: float
    wall_time_s: float
    final_loss: float | None
    stored_params: int
    trainable_params: int
    adapter_set_name: str | None = None
    eval: dict[str, float] | None = None
    stopped_early: bool = False


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_training(
    task: str, task_args: TaskArguments, data: DataArguments, model_args: ModelArguments, training: Any
):
    """One training phase for ``task``; returns a :class:`TrainingSummary`.

    ``--mode shared|block``: builds physics + denoiser, trains everything and saves the backbone
    (``save_pretrained``) into ``training.output_dir``. ``--mode lorun``: loads ``--backbone``, adds the K
    stage adapters (gamma of eq. 12) with this run's physics (a new CS ratio, SR kernel/scale or mask), trains
    them and saves the adapter set into ``output_dir/<adapter_set_name>/``. ``--push_to_hub`` pushes the
    result.
    """
    from lorun_peft.training import train
    from lorun_peft.tuners import StageLoRAConfig
    from lorun_peft.unfolding import LoRunModel

    _check_task(task)
    start = time.perf_counter()
    if model_args.push_to_hub:  # before any training: a push that cannot start fails now, not at the end
        from lorun_peft.hub import check_push_access

        check_push_access(model_args.hub_model_id or Path(training.output_dir).resolve().name)
    data, model_args, training = apply_smoke(task, data, model_args, training)
    run_target = {
        "task": task,
        "mode": model_args.mode,
        "adapter_set": (model_args.adapter_set_name or default_set_name(task, task_args))
        if model_args.mode == "lorun"
        else None,
    }
    claim_output_dir(training.output_dir, run_target)
    torch.manual_seed(training.seed)
    physics, physics_text = build_physics(
        task, task_args, data.patch_size, model_args.smoke, training.seed, data.data_dir
    )
    source, data_text = build_train_source(task, task_args, data, model_args.smoke, training.seed)
    if _is_main_process():
        report_split(task, data, data_text)
    set_name = None
    if model_args.mode == "lorun":
        model = LoRunModel.from_pretrained(model_args.backbone).train()
        if model.config.mode != "shared":
            raise ValueError(
                f"--backbone {model_args.backbone} is a {model.config.mode!r} model; phase 2 needs a shared "
                "backbone (train it with --mode shared)"
            )
        expected = PHYSICS_TASK.get(model.config.physics["type"])
        if expected != task:
            raise ValueError(f"--backbone {model_args.backbone} was trained for {expected!r}, not {task!r}")
        set_name = model_args.adapter_set_name or default_set_name(task, task_args)
        keep = task == "cs" and model.task.physics.get_config() == physics.get_config()
        if task == "cs" and not keep and model_args.phi_init == "backbone":
            _start_from_backbone_phi(physics, model.task.physics, training.seed)
        adapter_names = model.add_stage_adapters(
            set_name,
            StageLoRAConfig(
                num_stages=model.config.num_stages,
                gamma=model_args.gamma,
                init_lora_weights=ADAPTER_INITS[model_args.adapter_init],
            ),
            physics=None if keep else physics.to(model.dtype),
        )
        if not model_args.train_adapters:
            freeze_adapters(model, adapter_names)
    elif model_args.warm_start:
        model = _warm_start_model(model_args, task, physics)
    else:
        denoiser = build_denoiser(
            model_args.denoiser,
            task_channels(task, task_args),
            model_args.width,
            model_args.depth,
            noise_level_map=model_args.noise_level_map,
        )
        model = LoRunModel.from_components(
            physics,
            denoiser,
            num_stages=model_args.num_stages,
            algorithm=model_args.algorithm or PAPER_ALGORITHM[task],
            mode=model_args.mode,
            step_init=model_args.step_init,
        )
    eval_fn = _eval_fn(task, task_args, data, model_args.smoke)
    sampler = build_physics_sampler(
        task, task_args, data.patch_size, model_args.smoke, training.seed, data.data_dir
    )
    result = train(model, source, training, eval_fn=eval_fn, physics_sampler=sampler)
    model = result.model
    if isinstance(sampler, RandomKernels):  # an all-kernel set is saved with K1, the default kernel
        with torch.no_grad():
            model.physics.kernel.copy_(sampler.kernels[0])
    output_dir = Path(training.output_dir)
    report = model.parameter_report()
    summary = TrainingSummary(
        task=task,
        mode=model_args.mode,
        output_dir=str(output_dir),
        saved=str(output_dir / set_name) if set_name else str(output_dir),
        physics=physics_text,
        data=data_text,
        steps=result.global_step,
        train_time_s=result.train_time_s,
        wall_time_s=0.0,
        final_loss=result.losses[-1] if result.losses else None,
        stored_params=report.total.stored,
        trainable_params=report.total.trainable,
        adapter_set_name=set_name,
        eval=result.eval_history[-1]["eval"] if result.eval_history else None,
        stopped_early=result.stopped_early,
    )
    if _is_main_process():
        if set_name is None:
            model.save_pretrained(output_dir)
        else:
            model.save_adapter_set(output_dir, set_name)
        if model_args.push_to_hub:
            repo_id = model_args.hub_model_id or output_dir.resolve().name
            if set_name is None:
                model.push_to_hub(repo_id)
            else:
                model.push_adapter_set(repo_id, set_name)
        summary.wall_time_s = time.perf_counter() - start
        write_atomic(output_dir / "run_summary.json", json.dumps(asdict(summary), indent=2))
    return summary


_REUSE_ADVICE = "delete it or use another --output_dir"
#: Written at the start of a run into its output folder: which task, mode and adapter set it trains.
RUN_TARGET_FILE = "run_target.json"


def claim_output_dir(output_dir: str | os.PathLike, target: dict[str, Any]) -> None:
    """Refuse an output folder that holds another run's state; else record ``target`` in it.

    ``log.jsonl``, ``run_summary.json`` and the checkpoints belong to one run: a second adapter set
    trained into the same folder would append to the first one's log and resume its checkpoint.
    """
    folder = Path(output_dir)
    previous = None
    has_state = any((folder / name).exists() for name in ("log.jsonl", "run_summary.json")) or any(
        folder.glob("checkpoint-*")
    )
    if has_state and (folder / RUN_TARGET_FILE).is_file():
        previous = read_json_object(folder / RUN_TARGET_FILE, _REUSE_ADVICE)
    elif (folder / "run_summary.json").is_file():  # a folder written before run_target.json existed
        summary = read_json_object(folder / "run_summary.json", _REUSE_ADVICE)
        previous = {
            "task": summary.get("task"),
            "mode": summary.get("mode"),
            "adapter_set": summary.get("adapter_set_name"),
        }
    if previous is not None and previous != target:

        def what(run: dict[str, Any]) -> str:
            set_text = f" of adapter set {run['adapter_set']!r}" if run.get("adapter_set") else ""
            return f"a {run.get('task')} --mode {run.get('mode')} run{set_text}"

        name = target.get("adapter_set") or target["mode"]
        hint = f"{folder}/{name}" if target.get("adapter_set") else f"{folder}-{name}"
        raise ValueError(
            f"--output_dir {folder} holds {what(previous)} (its log, checkpoints and summary); this is "
            f"{what(target)}: use one output folder per run, e.g. --output_dir {hint}"
        )
    if _is_main_process():
        write_atomic(folder / RUN_TARGET_FILE, json.dumps(target, indent=2, sort_keys=True) + "\n")


def _warm_start_model(model_args: ModelArguments, task: str, physics: Any) -> Any:
    """The saved model of ``--warm_start``, checked against this run's mode and physics, in train mode."""
    from lorun_peft.unfolding import LoRunModel

    model = LoRunModel.from_pretrained(model_args.warm_start).train()
    if model.config.mode != model_args.mode:
        raise ValueError(
            f"--warm_start {model_args.warm_start} is a {model.config.mode!r} model, but --mode is "
            f"{model_args.mode!r}"
        )
    saved = model.task.physics.get_config()
    if saved != physics.get_config():
        raise ValueError(
            f"--warm_start {model_args.warm_start} was trained with physics {saved}, this run asks for "
            f"{physics.get_config()}: pass the same task options"
        )
    return model


def _start_from_backbone_phi(physics: Any, backbone_physics: Any, seed: int) -> None:
    """Initialise a new learned CS ``Phi`` from the backbone's (``--phi_init backbone``)."""
    import torch

    from lorun_peft.physics import BlockCS, derive_sampling_matrix

    if not (isinstance(physics, BlockCS) and physics.learnable and isinstance(backbone_physics, BlockCS)):
        return  # a fixed matrix (--phi_matrix) is used as given
    if backbone_physics.block_size != physics.block_size:
        raise ValueError(
            f"--phi_init backbone needs the backbone's block size ({backbone_physics.block_size}), got "
            f"--block_size {physics.block_size}; use --phi_init random"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        physics.Phi.copy_(derive_sampling_matrix(backbone_physics.Phi, physics.num_rows, generator))


def freeze_adapters(model: Any, adapter_names: list[str]) -> None:
    """Stop ``adapter_names``' LoRA factors from training (phase 2 then trains the task parameters only)."""
    from lorun_peft.tuners import StageLoRALayer

    for layer in model.modules():
        if isinstance(layer, StageLoRALayer):
            for name in adapter_names:
                if name in layer.lora_A:
                    layer.lora_A[name].requires_grad_(False)
                    layer.lora_B[name].requires_grad_(False)


def _eval_fn(task: str, task_args: TaskArguments, data: DataArguments, smoke: bool):
    """``eval_fn`` for :func:`~lorun_peft.training.train` scoring ``--eval_data`` with the task's protocol."""
    if not data.eval_data:
        return None
    from lorun_peft.evaluation import evaluate_items, load_test_items

    items = load_test_items(task, data.eval_data, bands=task_args.bands, max_items=data.max_eval_images)
    # CASSI: score with the full mask (training measures with crops of it), as examples/evaluate.py does.
    mask = resolve_mask(task_args, smoke, SMOKE_MASK_SIZE, 0, data.data_dir)[0] if task == "cassi" else None

    def eval_fn(model: Any) -> dict[str, float]:
        report = evaluate_items(model, task, items, mask=mask)
        return {"psnr": report.mean_psnr, "ssim": report.mean_ssim}

    return eval_fn


def parse_training_args(task: str, argv: list[str] | None = None, description: str | None = None):
    """Parse ``argv`` into ``(TaskArguments, DataArguments, ModelArguments, UnfoldingTrainingConfig)``."""
    from transformers import HfArgumentParser

    from lorun_peft.evaluation.command import _HelpFormatter
    from lorun_peft.training import UnfoldingTrainingConfig

    parser = HfArgumentParser(
        (TaskArguments, DataArguments, ModelArguments, UnfoldingTrainingConfig),
        description=description,
        formatter_class=_HelpFormatter,
    )
    parser.set_defaults(**SCRIPT_TRAINING_DEFAULTS)
    _hide_other_tasks_options(parser, task)
    return parser.parse_args_into_dataclasses(args=argv)


#: The help prefix that marks an option as one task's (``"CS: sampling ratio ..."``).
_TASK_HELP_PREFIX = {"cs": "CS:", "sr": "SR:", "cassi": "CASSI:"}


def _hide_other_tasks_options(parser: Any, task: str) -> None:
    """Leave out of ``--help`` the options of the other tasks (they still parse, and are ignored)."""
    import argparse

    others = tuple(prefix for name, prefix in _TASK_HELP_PREFIX.items() if name != task)
    for action in parser._actions:
        if isinstance(action.help, str) and action.help.startswith(others):
            action.help = argparse.SUPPRESS


def main_for_task(task: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """Entry point of ``examples/train_<task>.py``: parse, train, print one line; bad input -> exit 2."""
    try:
        task_args, data, model_args, training = parse_training_args(task, argv, description)
        summary = run_training(task, task_args, data, model_args, training)
    except (ValueError, FileNotFoundError) as error:
        print(f"train_{task}: error: {error}", file=sys.stderr)
        return 2
    if _is_main_process():
        loss = "n/a" if summary.final_loss is None else f"{summary.final_loss:.4g}"
        print(
            f"{task} {summary.mode}: {summary.steps} steps in {summary.train_time_s:.1f} s, "
            f"final loss {loss}; "
            f"{summary.stored_params:,} stored / {summary.trainable_params:,} trainable parameters; saved "
            f"{summary.saved}",
            flush=True,
        )
    return 0


__all__ = [
    "DENOISERS",
    "MODES",
    "TASKS",
    "DataArguments",
    "ModelArguments",
    "TaskArguments",
    "TrainingSummary",
    "apply_smoke",
    "build_denoiser",
    "build_physics",
    "build_physics_sampler",
    "build_train_source",
    "crop_mask",
    "freeze_adapters",
    "cube_wavelengths",
    "default_data_dir",
    "default_set_name",
    "kernel_index",
    "load_sr_kernel",
    "main_for_task",
    "parse_training_args",
    "resolve_mask",
    "run_training",
    "smoke_items",
    "synthetic_cube",
    "synthetic_mask",
]

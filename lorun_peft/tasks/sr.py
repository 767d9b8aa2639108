"""Super-resolution with a blur kernel (RGB), scored with the KAIR/USRNet protocol on the Y channel.

An SR set is trained on one kernel of ``kernels_12.mat`` (``x2-k1``) or on a kernel drawn from the 12
for every batch (``--kernel all``: set ``x2``, one set for every kernel of a scale, as USRNet does).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorun_peft import metrics

from .base import ImageTask, Metric, data_roots

__all__ = [
    "ALL_KERNELS",
    "SRArguments",
    "SRTask",
    "is_all_kernels",
    "kernel_index",
    "load_sr_kernel",
    "load_sr_kernels",
    "sr_set_name",
]

#: ``--kernel all``: an SR adapter set trained on a kernel drawn from the 12 for every batch.
ALL_KERNELS = "all"
#: The 12 kernels, relative to the data root.
DEFAULT_KERNELS = "kernels/kernels_12.mat"


@dataclass
class SRArguments:
    """The SR degradation: kernel and scale."""

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


def kernel_index(kernel: str | int) -> int:
    """0-based index of ``"K1"`` .. ``"K12"`` (or 1..12) in ``kernels_12.mat``."""
    match = re.fullmatch(r"[kK]?(\d+)", str(kernel).strip())
    if match is None or not 1 <= int(match.group(1)) <= 12:
        raise ValueError(f"kernel must be K1..K12 (the 12 kernels of kernels_12.mat), got {kernel!r}")
    return int(match.group(1)) - 1


def is_all_kernels(kernel: str | int) -> bool:
    """Whether ``--kernel`` asks for every kernel of kernels_12.mat (``all``)."""
    return str(kernel).strip().lower() == ALL_KERNELS


def sr_set_name(scale: int, kernel: str | int | None = "K1") -> str:
    """``x2-k1`` (scale 2, kernel K1), or ``x2`` for the all-kernel set (``kernel="all"``)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"SR scale must be a positive integer, got {scale!r}")
    kernel = "K1" if kernel is None else kernel
    if is_all_kernels(kernel):
        return f"x{scale}"
    try:
        index = kernel_index(kernel)
    except ValueError:
        raise ValueError(f"SR kernel must be K1..K12 (kernels_12.mat), got {kernel!r}") from None
    return f"x{scale}-k{index + 1}"


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
    looked = [root / DEFAULT_KERNELS for root in data_roots(data_dir)]
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


class SRTask(ImageTask):
    name = "sr"
    label = "SR"
    title = "super-resolution with a blur kernel, RGB (sets x{scale}: any of 12 kernels; x{scale}-k{kernel})"
    arguments = SRArguments
    algorithm = "pgd"
    protocol_label = "SR protocol: Y channel, scale-pixel border shaved"
    hub_tag = "super-resolution"
    protocol = (
        "SR (KAIR/USRNet): HR cropped to a multiple of the scale; PSNR/SSIM (Gaussian) on BT.601 Y, "
        "[0, 255], border of `scale` pixels shaved"
    )
    train_data = "BSDS500_train200"
    test_data = "Set5"
    physics_types = ("blur_downsample",)
    image_channels = 3
    smoke_patch_size = 36
    default_set = "x2-k1"
    set_key = "scale"
    recipe = (
        "--mode shared --kernel K1 --scale 2 --output_dir runs/sr/backbone",
        "--mode lorun --backbone runs/sr/backbone --kernel K1 --scale 2 --output_dir runs/sr/sets/x2",
        "--mode lorun --backbone runs/sr/backbone --kernel K1 --scale 4 --output_dir runs/sr/sets/x4",
    )

    def build_physics(
        self, args: SRArguments, patch_size: int, *, smoke: bool = False, seed: int = 0, data_dir: Any = None
    ) -> tuple[Any, str]:
        """:class:`~lorun_peft.physics.BlurDownsample` with ``--kernel`` (K1 for ``all``) and ``--scale``."""
        from lorun_peft.physics import BlurDownsample

        if patch_size % args.scale:
            raise ValueError(
                f"--patch_size {patch_size} must be a multiple of --scale {args.scale} "
                f"(e.g. {patch_size - patch_size % args.scale})"
            )
        where = {"data_dir": data_dir, "allow_synthetic": smoke}
        if is_all_kernels(args.kernel):
            kernels, source = load_sr_kernels(args.kernels_file, **where)
            return (
                BlurDownsample(kernels[0], args.scale),
                f"SR x{args.scale}, a kernel of the 12 from {source} drawn per batch",
            )
        kernel, source = load_sr_kernel(args.kernel, args.kernels_file, **where)
        return BlurDownsample(
            kernel, args.scale
        ), f"SR x{args.scale}, kernel {args.kernel.upper()} from {source}"

    def physics_sampler(
        self, args: SRArguments, patch_size: int, *, smoke: bool = False, seed: int = 0, data_dir: Any = None
    ) -> Any:
        """``--kernel all``: a :class:`~lorun_peft.data.RandomKernels` over the 12 kernels."""
        if not is_all_kernels(args.kernel):
            return None
        from lorun_peft.data.kernel_draws import RandomKernels

        kernels = load_sr_kernels(args.kernels_file, data_dir=data_dir, allow_synthetic=smoke)[0]
        return RandomKernels(kernels)

    def evaluation_options(
        self, args: SRArguments, *, smoke: bool = False, data_dir: Any = None
    ) -> dict[str, Any]:
        """``--kernel all``: score with K1, the kernel the set is saved with, not the last one drawn."""
        if not is_all_kernels(args.kernel):
            return {}
        kernels, _ = load_sr_kernels(args.kernels_file, data_dir=data_dir, allow_synthetic=smoke)
        return {"kernel": kernels[0]}

    @contextlib.contextmanager
    def evaluation_physics(
        self,
        model: Any,
        shape: tuple[int, ...],
        *,
        index: int = 0,
        seed: int = 0,
        kernel: Tensor | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """The active physics, with ``kernel`` written into it while scoring when given (put back on exit)."""
        physics = model.physics
        if kernel is None:
            yield physics
            return
        current = physics.kernel
        if tuple(kernel.shape) != tuple(current.shape):
            raise ValueError(
                f"evaluation kernel has shape {tuple(kernel.shape)}, the model's is {tuple(current.shape)}"
            )
        saved = current.detach().clone()
        with torch.no_grad():
            current.copy_(kernel)
        try:
            yield physics
        finally:
            with torch.no_grad():
                current.copy_(saved)

    def finish_training(self, model: Any, sampler: Any) -> None:
        """An all-kernel set is saved with K1, the default kernel (not the last one drawn)."""
        kernels = getattr(sampler, "kernels", None)
        if kernels is not None:
            with torch.no_grad():
                model.physics.kernel.copy_(kernels[0])

    def set_name(self, args: SRArguments) -> str:
        return sr_set_name(args.scale, args.kernel)

    def describe_physics(self, config: dict[str, Any]) -> str:
        kh, kw = config["kernel_size"]
        return f"blur ({kh}x{kw} kernel) + downsampling x{config['scale']}"

    def prepare(self, image: Tensor, physics: Any) -> Tensor:
        s = physics.scale
        return image[..., : image.shape[-2] - image.shape[-2] % s, : image.shape[-1] - image.shape[-1] % s]

    def score(self, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
        restored, s = restored.clamp(0, 1), physics.scale
        return float(metrics.psnr_y(restored, clean, shave=s)), float(
            metrics.ssim_y(restored, clean, shave=s)
        )

    def stage_metric(self, physics: Any) -> Metric:
        scale = int(physics.scale)
        return lambda pred, target: (
            metrics.psnr_y(pred, target, shave=scale)
            if pred.shape[-3] == 3
            else metrics.psnr(pred, target, data_range=1.0)
        )

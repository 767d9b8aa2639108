"""What the ``lorun`` subcommands share: the parser class, devices, model selection and loading, file helpers.

Every subcommand that restores or describes a model takes the same model options
(:func:`_add_model_arguments`): a shipped pretrained model of ``--task`` with an adapter set chosen by its
task mode (``--ratio``, ``--scale``/``--kernel``, ``--missing``) or ``--adapter-set``, or the user's own
``--backbone``/``--adapters``. :func:`_load_model` turns them into one model on ``--device`` through
:mod:`lorun_peft.pretrained`, so ``restore``, ``evaluate`` and ``info`` select a model identically. The
parser class :class:`_Parser` gives every subcommand the one-line ``error:`` and exit code 2; the saved
measurement readers and writers serve ``lorun restore`` (written atomically with
:func:`lorun_peft.io.write_atomic`).
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorun_peft.io import write_atomic
from lorun_peft.tasks import get_task, task_for_physics, task_names

#: Suffixes read as saved measurements by ``lorun restore`` (images are read by their own suffixes).
MEASUREMENT_SUFFIXES = (".npy", ".safetensors", ".mat")
#: The command-line options that select an adapter set by its task mode (each names a field of one task's
#: arguments dataclass: --ratio is CS's, --scale/--kernel SR's, --missing inpainting's).
SET_OPTIONS = ("ratio", "scale", "kernel", "missing")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``lorun <command>: error: ... (see --help)`` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------- helpers
def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"--device {name!r} is not a device (expected cpu, cuda, cuda:1, mps ...)"
        ) from error
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not available:
        raise ValueError(
            f"--device {name!r}: this PyTorch build ({torch.__version__}) has no usable {device.type} "
            "device; use --device cpu or leave --device out"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _percent(value: float) -> str:
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text} %"


def _describe_physics(config: dict[str, Any]) -> str:
    """One line for a physics config (``LinearOperator.get_config()``), in its task's words."""
    try:
        return task_for_physics(config).describe_physics(config)
    except ValueError:
        return json.dumps(config, sort_keys=True)


def _task_of(model: Any) -> str:
    return task_for_physics(model).name


# ---------------------------------------------------------------------------------------------- models
def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model",
        "The shipped pretrained model of --task (an adapter set chosen by --ratio, or --scale/--kernel, or "
        "--adapter-set), or your own with --backbone/--adapters.",
    )
    group.add_argument(
        "--task", choices=task_names(), default=None, help="task of the shipped model (default: cs)"
    )
    group.add_argument(
        "--ratio", type=float, default=None, metavar="R", help="CS: select set ratio-XX (0.25 or 25)"
    )
    group.add_argument(
        "--scale", type=int, default=None, metavar="S", help="SR: select set x{scale}-k{kernel}"
    )
    group.add_argument(
        "--kernel", default=None, metavar="K", help="SR: kernel K1..K12 of the set (default K1)"
    )
    group.add_argument(
        "--missing",
        type=float,
        default=None,
        metavar="M",
        help="inpainting: select set missing-XX (0.7 for 70 %%)",
    )
    group.add_argument(
        "--adapter-set", default=None, metavar="NAME", help="adapter set by name (e.g. ratio-25, x4-k1)"
    )
    group.add_argument("--backbone", default=None, metavar="PATH", help="your own backbone: folder or Hub id")
    group.add_argument(
        "--adapters",
        default=None,
        metavar="PATH",
        help="adapter sets: a set folder, or a folder/Hub repo of <set>/ folders (all are loaded); "
        "without --backbone they go onto the shipped backbone of --task",
    )
    group.add_argument(
        "--pretrained-dir",
        default=None,
        metavar="DIR",
        help="root of the shipped assets (default: $LORUN_PRETRAINED_DIR or lorun_peft/assets/pretrained)",
    )
    group.add_argument(
        "--device", default=None, metavar="DEV", help="cpu, cuda, ... (default: cuda if available, else cpu)"
    )


def _selected_set(args: argparse.Namespace, task: str | None) -> str | None:
    """The set named by --adapter-set, or by a task mode (--ratio, --scale/--kernel, --missing)."""
    chosen = {name: getattr(args, name) for name in SET_OPTIONS if getattr(args, name, None) is not None}
    if args.adapter_set is not None:
        if chosen:
            flags = "/".join(f"--{n}" for n in chosen)
            raise ValueError(
                f"--adapter-set names the set; {flags} would select another one: give one or the other"
            )
        return args.adapter_set
    if not chosen:
        return None
    owners = [
        get_task(n) for n in task_names() if set(chosen) <= {f.name for f in fields(get_task(n).arguments)}
    ]
    flags = "/".join(f"--{n}" for n in chosen)
    if not owners:
        raise ValueError(f"{flags} select sets of different tasks: give the options of one task")
    spec = owners[0]
    s = "s" if len(chosen) == 1 else ""
    if task not in (None, spec.name):
        raise ValueError(f"{flags} select{s} {spec.label} sets, but the task is {task!r}")
    if spec.set_key not in chosen:
        raise ValueError(f"{flags} need{s} --{spec.set_key} (it names the {spec.label} set)")
    return spec.set_name_for(**chosen)


def _sr_choice(args: argparse.Namespace, names: list[str]) -> tuple[str | None, int | None]:
    """``--scale``/``--kernel`` -> (set name, kernel index to write into an all-kernel set, or None)."""
    from lorun_peft.pretrained import resolve_sr_set

    if args.adapter_set is not None or args.scale is None:
        return None, None
    return resolve_sr_set(names, args.scale, args.kernel)


def _apply_kernel(model: Any, index: int | None, pretrained_dir: str | None) -> None:
    """Write shipped kernel ``K{index+1}`` into an all-kernel SR set's physics."""
    if index is None:
        return
    from lorun_peft import pretrained

    kernels = pretrained.pretrained_kernels(pretrained_dir)
    with torch.no_grad():
        model.physics.kernel.copy_(kernels[index].to(model.physics.kernel))


def _load_model(args: argparse.Namespace) -> tuple[Any, str]:
    """The selected model (eval mode, on ``--device``) and a one-line description of where it came from."""
    from lorun_peft import pretrained

    if args.backbone is not None:
        index = None
        if args.scale is not None and args.adapters is not None and args.adapter_set is None:
            model = pretrained.load_model(args.backbone, args.adapters)  # every set resident
            selected, index = _sr_choice(args, model.list_adapter_sets())
            model.set_adapter_set(selected)
        else:
            model = pretrained.load_model(args.backbone, args.adapters, _selected_set(args, None))
        _apply_kernel(model, index, args.pretrained_dir)
        source = f"backbone {args.backbone}" + (f", adapters {args.adapters}" if args.adapters else "")
        task = _task_of(model)
        if args.task is not None and args.task != task:
            raise ValueError(f"--task {args.task} but the backbone's physics is a {task!r} model")
    else:
        task = args.task or "cs"
        if args.adapters is None:
            pretrained.pretrained_dir(task, args.pretrained_dir)  # clear error when none is installed
        set_name = _selected_set(args, task)
        index = None
        if args.adapters is not None:
            backbone = pretrained.pretrained_dir(task, args.pretrained_dir) / pretrained.BACKBONE_DIR
            model = pretrained.load_model(backbone, args.adapters, set_name)
            source = f"shipped {task} backbone {backbone}, adapters {args.adapters}"
        else:
            if args.scale is not None:  # an SR set: single-kernel if installed, else the all-kernel one
                set_name, index = _sr_choice(
                    args, pretrained.list_pretrained(args.pretrained_dir).get(task, [])
                )
            model = pretrained.load_pretrained(task, set_name, args.pretrained_dir)
            source = f"shipped pretrained {task!r} ({pretrained.pretrained_dir(task, args.pretrained_dir)})"
        _apply_kernel(model, index, args.pretrained_dir)
        if index is not None:
            source += f", kernel K{index + 1} in the all-kernel set {set_name}"
    return model.to(_device(args.device)), source


def _model_line(model: Any) -> str:
    k = model.num_stages
    if model.mode == "lorun":
        return f"LoRun-{k} (adapter set {model.active_adapter_set})"
    return f"Block-{k}" if model.mode == "block" else f"Block-{k}-share"


# ---------------------------------------------------------------------------------------------- files
def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size must be HxW with positive integers (e.g. 256x256), got {text!r}")
    return int(parts[0]), int(parts[1])


def _read_measurement(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """A saved measurement (``.npy``, ``.safetensors``, ``.mat``) as float32 and the file's metadata."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise ValueError(f"cannot read {path} as a numeric .npy array: {error}") from error
        if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
            raise ValueError(f"{path} is not a single .npy array (an .npz archive?); expected one array")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"{path} holds {array.dtype}, expected a real numeric array")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), {}
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                key = "measurement" if "measurement" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"{path} holds tensors {keys}; expected one named 'measurement'")
                tensor = handle.get_tensor(key)
                if tensor.is_complex() or tensor.dtype == torch.bool:
                    raise ValueError(f"{path}: {key!r} is {tensor.dtype}, expected a real numeric tensor")
                return tensor.float(), dict(handle.metadata() or {})
        except SafetensorError as error:
            raise ValueError(f"cannot read {path} as safetensors: {error}") from error
    from lorun_peft.physics import load_mat_array

    return load_mat_array(path, default="measurement").float(), {}


def _write_measurement(path: Path, y: torch.Tensor, model: Any, size: tuple[int, int]) -> Path:
    """Save ``y``: ``.npy``, or ``.safetensors`` with the physics, adapter set and image size as metadata."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, y.detach().cpu().float().numpy())
        return write_atomic(path, buffer.getvalue())
    if suffix == ".safetensors":
        from safetensors.torch import save

        metadata = {
            "physics": json.dumps(model.physics.get_config()),
            "adapter_set": model.active_adapter_set or "",
            "image_size": f"{size[0]}x{size[1]}",
        }
        return write_atomic(path, save({"measurement": y.detach().cpu().float().contiguous()}, metadata))
    raise ValueError(f"--save-measurement must end in .npy or .safetensors, got {path}")

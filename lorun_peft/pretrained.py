"""Pretrained LoRun models shipped inside the package: one backbone per task and its adapter sets.

The assets live under ``lorun_peft/assets/pretrained`` (or the folder named by the environment variable
``LORUN_PRETRAINED_DIR``, or a ``root=`` argument), one folder per task::

    <root>/<task>/backbone/{config.json, model.safetensors}     a phase-1 LoRunModel (mode "shared")
    <root>/<task>/adapters/<set>/...                            adapter sets (LoRunModel.save_adapter_set)
    <root>/<task>/manifest.json                                 optional: how they were trained

``cs`` ships block CS sets ``ratio-1`` to ``ratio-50`` (each with its own learned Phi and steps), ``sr``
ships ``x2-k1`` (kernel K1 of ``kernels_12.mat``) and ``x2``, ``x3``, ``x4`` (any of the 12 kernels),
``cassi`` ``mask-28`` and ``mask-real``, ``inpainting`` ``missing-50/70/90``.
:func:`load_pretrained` returns the backbone with all of its sets resident and one of them active;
:func:`load_model` does the same for any backbone and adapter folder (or Hub id), and
:func:`save_pretrained_assets` writes a model and its sets in this layout. See docs/pretrained.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from lorun_peft.hub import SHIPPED_ADAPTERS_DIR
from lorun_peft.integrity import add_backbone_checksums
from lorun_peft.io import replace_folder, write_atomic
from lorun_peft.tasks import get_task, task_names
from lorun_peft.tuners import record_set_checksums
from lorun_peft.tuners.adapter_set import SET_FILE

if TYPE_CHECKING:
    from lorun_peft.unfolding import LoRunModel

__all__ = [
    "PRETRAINED_ENV",
    "adapter_set_name",
    "list_pretrained",
    "load_model",
    "load_pretrained",
    "pretrained_dir",
    "pretrained_kernels",
    "pretrained_root",
    "read_manifest",
    "record_asset_checksums",
    "write_asset_cards",
    "resolve_sr_set",
    "save_pretrained_assets",
]

#: Environment variable that points at another asset root (same layout).
PRETRAINED_ENV = "LORUN_PRETRAINED_DIR"
#: The 12 USRNet kernels the shipped SR all-kernel sets (``x2``, ``x3``, ``x4``) were trained on.
KERNELS_FILE = "kernels_12.safetensors"

BACKBONE_DIR = "backbone"
ADAPTERS_DIR = SHIPPED_ADAPTERS_DIR  # <task>/adapters/: bare set names resolve there (lorun_peft.hub)
MANIFEST = "manifest.json"
_BACKBONE_FILES = (CONFIG_NAME, SAFE_WEIGHTS_NAME)


def pretrained_root(root: str | os.PathLike | None = None) -> Path:
    """The asset root: ``root``, else ``$LORUN_PRETRAINED_DIR``, else ``lorun_peft/assets/pretrained``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(PRETRAINED_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "assets" / "pretrained"


def _check_task(task: str) -> str:
    return get_task(task).name


def _installed(task_dir: Path) -> bool:
    return all((task_dir / BACKBONE_DIR / name).is_file() for name in _BACKBONE_FILES)


def _sets_in(folder: Path) -> list[str]:
    return sorted(p.parent.name for p in folder.glob(f"*/{SET_FILE}")) if folder.is_dir() else []


def list_pretrained(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Installed pretrained tasks and their adapter sets, e.g. ``{"cs": ["ratio-10", "ratio-25"]}``.

    A task counts as installed when its backbone folder holds ``config.json`` and ``model.safetensors``.
    """
    base = pretrained_root(root)
    return {task: _sets_in(base / task / ADAPTERS_DIR) for task in task_names() if _installed(base / task)}


def pretrained_dir(task: str, root: str | os.PathLike | None = None) -> Path:
    """The installed asset folder ``<root>/<task>``; ``FileNotFoundError`` when it is missing."""
    task_dir = pretrained_root(root) / _check_task(task)
    if not _installed(task_dir):
        installed = sorted(list_pretrained(root))
        raise FileNotFoundError(
            f"pretrained {task!r} is not installed at {task_dir} (expected {BACKBONE_DIR}/{CONFIG_NAME} and "
            f"{BACKBONE_DIR}/{SAFE_WEIGHTS_NAME} there; installed: {installed or 'none'}); set "
            f"{PRETRAINED_ENV} (lorun: --pretrained-dir) or pass root=, or use your own model "
            "(--backbone/--adapters)"
        )
    return task_dir


def read_manifest(task: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The task's ``manifest.json`` (training facts written by whoever trained the assets), or ``{}``."""
    path = pretrained_dir(task, root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def adapter_set_name(task: str, **selection: Any) -> str:
    """The conventional set name of a task mode, from the task's own rule (:meth:`TaskSpec.set_name_for`).

    ``adapter_set_name("cs", ratio=0.25)`` -> ``ratio-25`` (ratios above 1 are percent);
    ``adapter_set_name("sr", scale=4, kernel="K1")`` -> ``x4-k1``; ``adapter_set_name("inpainting",
    missing=0.7)`` -> ``missing-70``. Arguments given as ``None`` are left out.
    """
    return get_task(task).set_name_for(**{k: v for k, v in selection.items() if v is not None})


def load_model(
    backbone: str | os.PathLike,
    adapters: str | os.PathLike | None = None,
    adapter_set: str | None = None,
    *,
    revision: str | None = None,
) -> LoRunModel:
    """A backbone (folder or Hub id) with adapter sets resident and ``adapter_set`` active, in eval mode.

    ``adapters``: a set folder (holding ``adapter_set.json``: that one set is loaded), or a local folder
    or Hub repo holding ``<set>/`` folders (all of them are loaded). ``adapter_set`` picks the active
    set (``ValueError`` naming the available ones when it is not there); by default the first set.
    Without ``adapters`` and with ``adapter_set``, the set is looked up beside the backbone.
    """
    from lorun_peft import hub
    from lorun_peft.unfolding import LoRunModel

    backbone = hub.shipped_copy(backbone, revision) or backbone  # lorun-peft/<task>-backbone
    local = Path(backbone).expanduser()
    if local.is_dir() and not (local / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"backbone folder {local} has no {CONFIG_NAME} (expected a saved LoRunModel)")
    if not local.exists() and not hub.is_hub_id(backbone):
        raise FileNotFoundError(
            f"backbone {str(backbone)!r} is neither a local folder nor a Hub id 'owner/name'"
        )
    if not local.exists():
        hub.check_backbone_reachable(str(backbone), revision)
    model = LoRunModel.from_pretrained(backbone, revision=revision)
    if adapters is None:
        if adapter_set is not None:
            model.load_adapter(adapter_set, revision=revision)
        return model.eval()
    adapters = hub.shipped_copy(adapters, revision) or adapters  # lorun-peft/<task>-adapters
    path = Path(adapters).expanduser()
    if path.is_dir() and (path / SET_FILE).is_file():
        name = model.load_adapter(path)
        if adapter_set is not None and name != adapter_set:
            raise ValueError(f"{path} holds adapter set {name!r}, not {adapter_set!r}")
        return model.eval()
    names = hub.list_adapter_sets(adapters, revision=revision)
    if not names:
        raise FileNotFoundError(f"no adapter sets (folders with {SET_FILE}) in {adapters}")
    if adapter_set is not None and adapter_set not in names:
        raise ValueError(f"adapter set {adapter_set!r} is not in {adapters}; available: {', '.join(names)}")
    for name in names:
        model.load_adapter(adapters, name, revision=revision)
    model.set_adapter_set(adapter_set or names[0])
    return model.eval()


def load_pretrained(
    task: str = "cs", adapter_set: str | None = None, root: str | os.PathLike | None = None
) -> LoRunModel:
    """The shipped LoRun model of ``task``: backbone + all of its adapter sets, ``adapter_set`` active.

    Without ``adapter_set`` the task's default (``TaskSpec.default_set``) is active, or the first set
    when that one is not installed; a backbone shipped without sets comes back as a shared model. The
    model is on the CPU in float32 and eval mode; ``model.set_adapter_set(name)`` swaps task modes and
    ``with model.disable_adapters():`` runs the phase-1 backbone alone (Block-K-share). Raises
    ``FileNotFoundError`` when the assets are not installed and ``ValueError`` for an unknown set.
    """
    task_dir = pretrained_dir(task, root)
    adapters = task_dir / ADAPTERS_DIR
    names = _sets_in(adapters)
    if adapter_set is not None and adapter_set not in names:
        raise ValueError(
            f"pretrained {task!r} has no adapter set {adapter_set!r}; installed at {adapters}: "
            f"{', '.join(names) or 'none'}"
        )
    if not names:
        return load_model(task_dir / BACKBONE_DIR)
    default = get_task(task).default_set
    active = adapter_set or (default if default in names else names[0])
    return load_model(task_dir / BACKBONE_DIR, adapters, active)


def pretrained_kernels(root: str | os.PathLike | None = None) -> torch.Tensor:
    """The ``(12, 25, 25)`` kernels shipped with the SR model (USRNet's kernels_12.mat, K1..K12)."""
    path = pretrained_dir("sr", root) / KERNELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the shipped SR model has no {KERNELS_FILE} ({path}); pass a kernels file")
    return load_file(str(path))["kernels"].float()


def resolve_sr_set(names: list[str], scale: int, kernel: str | int | None) -> tuple[str, int | None]:
    """The SR set for ``scale`` and ``kernel`` among ``names``, and the kernel index to write into it.

    A single-kernel set ``x{scale}-k{n}`` (``n`` = 1 by default) is used as trained (index ``None``) when
    installed; otherwise the all-kernel set ``x{scale}`` with kernel ``n`` written into its physics.
    """
    single = adapter_set_name("sr", scale=scale, kernel=kernel)
    index = int(single.rsplit("-k", 1)[1]) - 1
    if single in names:
        return single, None
    if f"x{scale}" in names:
        return f"x{scale}", index
    raise ValueError(
        f"no SR adapter set for x{scale} kernel K{index + 1}: expected {single!r} or the all-kernel set "
        f"'x{scale}'; installed: {', '.join(names) or 'none'}"
    )


def cast_safetensors_file(path: str | os.PathLike, dtype: torch.dtype) -> None:
    """Rewrite a ``.safetensors`` file with its floating tensors in ``dtype`` (metadata kept; atomic)."""
    path = Path(path)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    write_atomic(path, save(cast, metadata=metadata))


def write_asset_cards(
    task_dir: str | os.PathLike, task: str | None = None, model: LoRunModel | None = None
) -> None:
    """Write the model cards of a ``<task>/`` asset folder: ``backbone/README.md`` and ``adapters/README.md``.

    They are the cards of the Hub repos ``lorun-peft/<task>-backbone`` and ``lorun-peft/<task>-adapters``
    (:data:`~lorun_peft.hub.SHIPPED_HUB_OWNER`), which hold exactly these folders (``hf upload <repo>
    <folder> .``), so the package's copy and the Hub's carry the same files and the same card.
    ``model``: the backbone as saved there (loaded from ``task_dir`` when not given).
    """
    from lorun_peft.hub import SHIPPED_HUB_OWNER, backbone_summary, write_model_card
    from lorun_peft.unfolding import LoRunModel

    task_dir = Path(task_dir)
    task = _check_task(task or task_dir.name)
    backbone_repo = f"{SHIPPED_HUB_OWNER}/{task}-backbone"
    if model is None:
        model = LoRunModel.from_pretrained(task_dir / BACKBONE_DIR)
    write_model_card(
        task_dir / BACKBONE_DIR, backbone_repo, backbone=backbone_summary(model), extra_tags=model.model_tags
    )
    if (task_dir / ADAPTERS_DIR).is_dir():
        write_model_card(
            task_dir / ADAPTERS_DIR, f"{SHIPPED_HUB_OWNER}/{task}-adapters", base_model=backbone_repo
        )


def record_asset_checksums(task_dir: str | os.PathLike) -> None:
    """Record the sha256 of every weight file of a ``<task>/`` asset folder in its backbone's and sets' JSON.

    ``save_pretrained`` and ``save_adapter_set`` record them as they write; this re-records them after
    the files were rewritten on purpose (the float16 cast of :func:`save_pretrained_assets`).
    """
    task_dir = Path(task_dir)
    add_backbone_checksums(task_dir / BACKBONE_DIR)
    for name in _sets_in(task_dir / ADAPTERS_DIR):
        record_set_checksums(task_dir / ADAPTERS_DIR / name)


def _rounded_copy(model: LoRunModel, dtype: torch.dtype) -> LoRunModel:
    """A copy of ``model`` whose floating tensors hold values exactly representable in ``dtype``.

    Saved from this copy, each adapter set records the fingerprint of the rounded backbone it is shipped
    with, so the sets load onto it; the caller's model is left untouched.
    """
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*rounded.parameters(), *rounded.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))
    return rounded


def save_pretrained_assets(
    model: LoRunModel,
    task: str,
    root: str | os.PathLike | None = None,
    manifest: dict[str, Any] | None = None,
    storage_dtype: torch.dtype | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write ``model``'s backbone and every resident adapter set as ``<root>/<task>/`` (the shipped layout).

    The whole task folder is built in a temporary folder beside it and swapped in with ``os.replace``, so
    a reader never sees half an asset tree. ``manifest`` (JSON-serialisable) becomes ``manifest.json``.
    ``storage_dtype`` (``torch.float16`` / ``torch.bfloat16``) rounds every floating tensor of a copy of
    the model to that precision and stores it so, halving the files; loading casts back to float32 (the
    backbone fingerprint the sets record is the rounded one). ``extra_tensors``
    maps file names to tensors written beside the backbone (e.g. the SR kernels). Returns the task folder.
    """
    if storage_dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"storage_dtype must be None, float32, float16 or bfloat16, got {storage_dtype}")
    _check_task(task)
    if model.config.mode != "shared":
        raise ValueError(f"pretrained assets hold a shared (phase-1) backbone, this model is {model.mode!r}")
    if storage_dtype not in (None, torch.float32):
        model = _rounded_copy(model, storage_dtype)
    base = pretrained_root(root)
    base.mkdir(parents=True, exist_ok=True)
    target = base / task
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.tmp-", dir=base))
    try:
        model.save_pretrained(tmp / BACKBONE_DIR)
        for name in model.list_adapter_sets():
            model.save_adapter_set(tmp / ADAPTERS_DIR, name)
        for filename, tensors in (extra_tensors or {}).items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / filename))
        if storage_dtype not in (None, torch.float32):
            for path in sorted((tmp / BACKBONE_DIR).rglob("*.safetensors")) + sorted(
                (tmp / ADAPTERS_DIR).rglob("*.safetensors")
            ):
                cast_safetensors_file(path, storage_dtype)
            record_asset_checksums(tmp)
        write_asset_cards(tmp, task, model)
        if manifest is not None:
            (tmp / MANIFEST).write_text(
                json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

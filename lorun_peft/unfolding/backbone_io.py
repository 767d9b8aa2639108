"""The checks around transformers' ``save_pretrained``/``from_pretrained`` for a LoRunModel backbone.

transformers loads any ``config.json`` + weights it finds and warns about the rest; a restoration
network must instead refuse pickles, a damaged ``config.json``, weights that fail the sha256 recorded
at save time (:mod:`lorun_peft.integrity`) and a reference that is neither a folder nor a Hub id,
each in one line. ``LoRunModel.from_pretrained`` runs these before and after transformers' loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from lorun_peft import hub
from lorun_peft.integrity import BACKBONE_CHECKSUM_KEY, backbone_weight_files, verify_checksums
from lorun_peft.io import read_json_object
from lorun_peft.physics import LinearOperator, physics_from_config

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


def _loadable_source(
    reference: str | os.PathLike, kwargs: dict[str, Any], verify_integrity: bool
) -> tuple[str | os.PathLike, Path]:
    """``(reference to load, its local path)``, checked before transformers' loader sees it.

    A shipped Hub id (``lorun-peft/<task>-backbone``) becomes the package's copy when the Hub has none;
    ``kwargs`` (``from_pretrained``'s) are set to safetensors only. A missing path that is not a Hub id,
    a local folder without safetensors weights (pickles are never loaded) and a local folder failing
    :func:`_check_backbone_folder` raise.
    """
    shipped = hub.shipped_copy(reference, kwargs.get("revision"))
    if shipped is not None:  # lorun-peft/<task>-backbone: the package's copy when the Hub has none
        reference = shipped
        kwargs.pop("revision", None)
    if kwargs.get("use_safetensors") is False:
        raise ValueError("LoRunModel loads safetensors weights only (use_safetensors=False would unpickle)")
    kwargs["use_safetensors"] = True
    local = Path(str(reference)).expanduser()
    if not local.exists() and not hub.is_hub_id(reference):
        raise FileNotFoundError(
            f"{reference} does not exist: expected a folder saved with "
            f"save_pretrained ({CONFIG_NAME} + {SAFE_WEIGHTS_NAME}) or a Hub repo id 'owner/name'"
        )
    has_weights = (local / SAFE_WEIGHTS_NAME).is_file() or (local / SAFE_WEIGHTS_INDEX_NAME).is_file()
    if local.is_dir() and not has_weights:
        pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt*"))
        raise ValueError(
            f"{local} has no {SAFE_WEIGHTS_NAME}"
            + (f" (only {', '.join(pickled)}: pickle files are never loaded)" if pickled else "")
            + "; expected a LoRunModel saved with save_pretrained (safetensors weights)"
        )
    if local.is_dir():
        _check_backbone_folder(local, verify_integrity)
    return reference, local


def _build_physics(config: dict[str, Any]) -> LinearOperator:
    """``physics_from_config``, on the CPU when transformers builds the model on the meta device.

    Operators check their placeholder tensors (e.g. a kernel's sum) at construction, which the meta
    device cannot do; physics tensors are tiny and are replaced by the checkpoint's right after.
    """
    if torch.get_default_device().type == "meta":
        with torch.device("cpu"):
            return physics_from_config(config)
    return physics_from_config(config)

"""Atomic writes: a file or a whole folder appears complete or not at all.

Every writer of something a later run or user reads (models, adapter sets, shipped assets, exports,
reports) builds it under a temporary name in the same folder and moves it into place with
``os.replace``, so a crash leaves the old version or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_json_object", "replace_folder", "write_atomic"]


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json_object(path: str | os.PathLike, advice: str) -> dict[str, Any]:
    """The JSON object in ``path``; a ``ValueError`` naming the file and ending in ``advice`` otherwise."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}): {advice}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object: {advice}")
    return value


def replace_folder(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` onto ``target`` (same file system); an old ``target`` is replaced.

    The old folder is first renamed aside, then ``tmp`` renamed in, then the old one deleted; if the
    second rename fails the old folder is put back.
    """
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / target.name, target)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)

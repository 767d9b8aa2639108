"""SHA-256 records of weight files, written at save time and checked at load time.

safetensors has no checksum: a flipped bit in tensor data loads without complaint and changes the
restored image. Every backbone (``config.json`` key :data:`BACKBONE_CHECKSUM_KEY`) and every adapter set
(``adapter_set.json`` key :data:`SET_CHECKSUM_KEY`) therefore records ``{relative file: sha256 hex}`` of
its weight files, as the Hub's LFS pointers do, and the loaders refuse a file whose digest differs.

This is a consistency check against accidental damage (disk, transfer, a half-finished edit), not a
signature: whoever can change a weight file can change the JSON beside it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from lorun_peft.io import write_atomic

__all__ = [
    "BACKBONE_CHECKSUM_KEY",
    "SET_CHECKSUM_KEY",
    "IntegrityError",
    "add_backbone_checksums",
    "backbone_weight_files",
    "file_sha256",
    "record_checksums",
    "verify_checksums",
]

#: ``config.json`` key of a saved backbone: ``{"model.safetensors": "<sha256 hex>"}``.
BACKBONE_CHECKSUM_KEY = "weights_sha256"
#: ``adapter_set.json`` key of a saved set: ``{"stage_00/adapter_model.safetensors": ..., ...}``.
SET_CHECKSUM_KEY = "weights_sha256"

_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A weight file is missing from, or differs from, the digest recorded when it was saved."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksums(folder: str | os.PathLike, files: Iterable[str]) -> dict[str, str]:
    """``{file: sha256}`` for ``files`` given relative to ``folder`` (POSIX separators, sorted)."""
    root = Path(folder)
    return {name: file_sha256(root / name) for name in sorted(files)}


def verify_checksums(
    folder: str | os.PathLike, recorded: object, files: Iterable[str], *, source: str
) -> None:
    """Check each of ``files`` (relative to ``folder``) against ``recorded``; raise :class:`IntegrityError`.

    ``recorded`` is what the JSON ``source`` holds under its checksum key. Every file that will be read
    must have a digest there, so a record cannot be bypassed by adding a file the record does not cover.
    """
    if not isinstance(recorded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in recorded.items()
    ):
        raise IntegrityError(
            f"{source}: the weight checksums are not a {{file: sha256}} mapping of strings: {recorded!r}"
        )
    root = Path(folder)
    for name in files:
        expected = recorded.get(name)
        if expected is None:
            raise IntegrityError(
                f"{root / name} has no recorded sha256 in {source}: the file was added after saving, "
                "or the record was edited; re-save the model, or load with verify_integrity=False"
            )
        actual = file_sha256(root / name)
        if actual != expected.lower():
            raise IntegrityError(
                f"{root / name} is damaged or was changed after saving: sha256 {actual[:16]}... != "
                f"{expected[:16]}... recorded in {source}; restore the file, or load with "
                "verify_integrity=False if you edited the weights on purpose"
            )


def backbone_weight_files(folder: str | os.PathLike) -> list[str]:
    """The safetensors weight files of a saved backbone folder (one file, or the shards)."""
    return sorted(path.name for path in Path(folder).glob("*.safetensors"))


def add_backbone_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """Record the digests of a backbone folder's weight files in its ``config.json``; returns them.

    Called by ``LoRunModel.save_pretrained`` on its temporary folder, before the files move into place.
    """
    root = Path(folder)
    config_file = root / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    checksums = record_checksums(root, backbone_weight_files(root))
    config[BACKBONE_CHECKSUM_KEY] = checksums
    write_atomic(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return checksums

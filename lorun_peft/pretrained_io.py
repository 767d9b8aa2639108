"""Strict loading and atomic saving for our ``PreTrainedModel`` subclasses.

transformers only warns about missing or unexpected checkpoint keys and re-initialises them, which
for a restoration network means silently wrong images; and its ``save_pretrained`` writes files in
place, so a crash can leave a half-written ``model.safetensors``. Denoisers and ``LoRunModel``
share these two helpers instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def raise_on_loading_problems(info: dict[str, Any], source: str | os.PathLike, what: str) -> None:
    """Raise ``ValueError`` listing missing, unexpected or mismatched keys of a ``from_pretrained``."""
    problems = [
        f"{kind.replace('_', ' ')}: {sorted(str(k) for k in info[kind])}"
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(kind)
    ]
    if problems:
        raise ValueError(f"checkpoint {source!s} does not match {what}: " + "; ".join(problems))


def save_atomically(save_directory: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp_dir)`` in a temporary folder inside ``save_directory``, then move each file in.

    Each file lands with ``os.replace``; weight shards of an earlier save that this one did not write
    are removed, so the folder never mixes two checkpoints. Not :func:`lorun_peft.io.replace_folder`:
    the folder may hold other files (adapter sets and a model card saved beside the backbone) that must
    stay, and transformers writes the files itself, so :func:`lorun_peft.io.write_atomic` does not apply.
    """
    target = Path(save_directory)
    if target.is_file():
        raise ValueError(f"save_directory {target} is a file; expected a folder")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".tmp-save-") as tmp:
        write(tmp)
        written = {p.name for p in Path(tmp).iterdir()}
        for stale in target.glob("model*.safetensors*"):
            if stale.name not in written:
                stale.unlink()
        for name in written:
            os.replace(Path(tmp) / name, target / name)
    return target

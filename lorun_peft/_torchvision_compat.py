"""Keep ``import transformers`` (and DeepInverse) working when torchvision's compiled ops cannot load.

The only torchvision wheels pip finds for the CPU build of torch are CUDA builds: their ``_C`` library
needs ``libc10_cuda.so`` and fails to load, after which torchvision's ``_meta_registrations.py``
registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally and the import
raises ``operator torchvision::nms does not exist``. transformers imports torchvision when it is
installed, so the whole library would fail to import. When (and only when) the compiled library does
not load, this declares the two operator schemas so torchvision imports; its Python code (transforms,
utilities) then works and only its compiled operators (``nms``, ``roi_align`` ...) are unavailable,
which nothing in this project uses. With matching builds, the real library is loaded and nothing is
declared.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["ensure_torchvision_importable"]

#: The declared schemas live as long as this library object (module-level reference).
_DECLARED: Any = None


def ensure_torchvision_importable() -> None:
    """Declare ``torchvision::nms``/``qnms`` if torchvision is installed but its ``_C`` cannot load."""
    global _DECLARED
    if "torchvision" in sys.modules or _DECLARED is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    for library in sorted(Path(spec.origin).parent.glob("_C*.so")):
        try:
            torch.ops.load_library(str(library))
            return  # matching builds: the real operators are registered
        except OSError:
            break
    _DECLARED = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already declared by someone else
            _DECLARED.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


ensure_torchvision_importable()  # on import: lorun_peft imports this module before transformers

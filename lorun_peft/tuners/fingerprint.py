"""The fingerprint of a model's base weights, which ties an adapter set to the backbone it was trained on."""

from __future__ import annotations

import hashlib

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from .stage import find_state_holder


def _base_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Base weights by their original names: state-dict tensors minus adapters, ``.base_layer`` removed.

    While an adapter is merged, the saved original weight is used, so the fingerprint never changes.
    """
    out: list[tuple[str, Tensor]] = []
    seen: set[int] = set()

    def walk(prefix: str, module: nn.Module, original_weight: Tensor | None = None) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, BaseTunerLayer):
            walk(prefix, module.get_base_layer(), getattr(module, "_original_weight", None))
            return
        for name, param in module.named_parameters(recurse=False):
            tensor = original_weight if name == "weight" and original_weight is not None else param
            out.append((f"{prefix}.{name}" if prefix else name, tensor))
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                out.append((f"{prefix}.{name}" if prefix else name, buf))
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def base_fingerprint(model: nn.Module, *, exact_dtype: bool = False) -> str:
    """``"sha256:<hex>"`` over the base weights' names, shapes and values (adapters excluded).

    A clean model and the same model with StageLoRA adapters injected (or merged) have the same
    fingerprint; any change of a base weight's value changes it. Floating-point tensors are hashed as
    float64 bytes, so a backbone moved to another float dtype by an exact cast (float32 -> float64, or
    a float16 checkpoint loaded as float32) keeps its fingerprint and its adapter sets still load.
    ``exact_dtype=True`` gives the earlier format (each tensor's own dtype and bytes), still accepted
    when loading sets saved with it.
    """
    holder = find_state_holder(model) or model
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_tensors(holder), key=lambda item: item[0]):
        data = tensor.detach().to("cpu")
        if data.is_floating_point() and not exact_dtype:
            data, kind = data.to(torch.float64), "float"
        else:
            kind = str(data.dtype)
        data = data.contiguous()
        digest.update(f"{name}|{kind}|{tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------- injection -----------------------------

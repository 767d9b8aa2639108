"""DeepInverse both ways (the optional extra ``pip install lorun-peft[deepinv]``: deepinv 0.5.0).

* :func:`from_deepinv`: any ``deepinv.physics.LinearPhysics`` as a
  :class:`~lorun_peft.physics.LinearOperator`, so it unfolds with LoRun. The HQS step is the physics' own
  ``prox_l2(z, y, gamma=1/mu)`` (closed form for ``Inpainting``, circular ``Downsampling``, ...; DeepInverse's
  least squares otherwise). ``Inpainting`` and ``Downsampling`` get a registered factory automatically, so
  a model built on them saves and reloads.
* :func:`to_deepinv` (or ``op.to_deepinv()``): any of our operators as a ``deepinv.physics.LinearPhysics``,
  so DeepInverse's algorithms (``deepinv.optim``), its ``Trainer`` and its tools (``adjointness_test``,
  ``compute_norm``, ``A_dagger``) run on BlockCS, CASSI and BlurDownsample. Its ``prox_l2(z, y, gamma)`` is
  our closed-form ``hqs_step(z, y, mu=1/gamma)``.

The matching rule both ways: ``hqs_step(z, y, mu) == prox_l2(z, y, gamma=1/mu)``, the minimiser of
``||A x - y||^2 + mu ||x - z||^2`` (DeepInverse writes it ``gamma/2 ||A x - y||^2 + 1/2 ||x - z||^2``).

Nothing here imports DeepInverse until a function needs it. DeepInverse imports torchvision, and the only
torchvision wheel pip offers for torch 2.13.0 (0.28.0) is a CUDA build whose compiled ``_C`` does not load on
a CPU-only torch; :mod:`lorun_peft._torchvision_compat` (run by ``import lorun_peft``, and again by
:func:`import_deepinv`) then declares the two op schemas torchvision's import needs, so its pure-Python
parts (all that DeepInverse's physics use) work. Where torch and torchvision match it does nothing.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .._torchvision_compat import ensure_torchvision_importable
from .base import LinearOperator
from .wrapped import OPERATOR_FACTORIES, WrappedOperator, as_operator, register_operator_factory

__all__ = ["from_deepinv", "import_deepinv", "to_deepinv"]

INSTALL_HINT = "pip install 'lorun-peft[deepinv]' (deepinv==0.5.0, torchvision==0.28.0)"


def import_deepinv() -> ModuleType:
    """The ``deepinv`` module, importing torchvision safely first; a clear ``ImportError`` if it is absent."""
    if sys.modules.get("deepinv") is not None:
        return sys.modules["deepinv"]
    ensure_torchvision_importable()  # already run by `import lorun_peft`; idempotent
    try:
        import deepinv
    except ImportError as exc:
        raise ImportError(f"DeepInverse interop needs the optional extra: {INSTALL_HINT} ({exc})") from exc
    return deepinv


def _reference(module: Any) -> tuple[torch.dtype, torch.device]:
    tensors = [*module.parameters(), *module.buffers()] if hasattr(module, "parameters") else []
    for tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            return (tensor.real.dtype if tensor.is_complex() else tensor.dtype), tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


# -- DeepInverse -> LoRun ---------------------------------------------------------------------------------


@register_operator_factory("deepinv.Inpainting")
def deepinv_inpainting(
    img_size: list[int], mask_shape: list[int], pixelwise: bool = True, generator: bool = False
) -> Any:
    """A ``deepinv.physics.Inpainting`` of ``img_size`` with an all-ones mask of ``mask_shape``.

    The mask (and the mask generator's state when ``generator``) come from the state dict.
    """
    dinv = import_deepinv()
    size = tuple(int(n) for n in img_size)
    if generator:
        physics = dinv.physics.Inpainting(size, mask=0.5, pixelwise=pixelwise, rng=torch.Generator())
    else:
        physics = dinv.physics.Inpainting(size, mask=torch.ones(size))
    physics.mask = torch.ones(tuple(int(n) for n in mask_shape))
    return physics


@register_operator_factory("deepinv.Downsampling")
def deepinv_downsampling(
    img_size: list[int], factor: int, padding: str = "circular", filter_shape: list[int] | None = None
) -> Any:
    """A ``deepinv.physics.Downsampling``; its filter (a placeholder delta here) comes from the state dict."""
    dinv = import_deepinv()
    kernel = None
    if filter_shape is not None:
        kernel = torch.zeros(tuple(int(n) for n in filter_shape))
        kernel[..., kernel.shape[-2] // 2, kernel.shape[-1] // 2] = 1.0
    return dinv.physics.Downsampling(
        img_size=tuple(int(n) for n in img_size), filter=kernel, factor=int(factor), padding=padding
    )


def _layout(module: Any) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _known_factory(physics: Any) -> tuple[str | None, dict[str, Any] | None]:
    """The registered factory and JSON arguments that rebuild ``physics``, when it is one we know.

    Only exact ``Inpainting``/``Downsampling`` instances; the rebuild is checked to have the same state-dict
    keys and shapes (a noise model with parameters, a batch of filters, ... would not reload).
    """
    dinv = import_deepinv()
    if type(physics) is dinv.physics.Inpainting and isinstance(physics.mask, Tensor):
        name = "deepinv.Inpainting"
        gen = getattr(physics, "gen", None)
        args = {
            "img_size": [int(n) for n in physics.img_size],
            "mask_shape": list(physics.mask.shape),
            "pixelwise": bool(getattr(gen, "pixelwise", True)),
            "generator": gen is not None,
        }
    elif type(physics) is dinv.physics.Downsampling and physics.imsize is not None:
        name = "deepinv.Downsampling"
        kernel = physics.filter
        args = {
            "img_size": [int(n) for n in physics.imsize],
            "factor": int(physics.factor),
            "padding": str(physics.padding),
            "filter_shape": None if kernel is None else list(kernel.shape),
        }
    else:
        return None, None
    if _layout(OPERATOR_FACTORIES[name](**args)) != _layout(physics):
        warnings.warn(
            f"this {type(physics).__name__} holds state that the {name!r} factory cannot rebuild "
            f"(state dict keys {sorted(physics.state_dict())}); the operator works but a model built on it "
            "cannot be saved: pass factory=/args= of a factory of your own",
            stacklevel=3,
        )
        return None, None
    return name, args


def from_deepinv(
    physics: Any, *, factory: str | None = None, args: dict[str, Any] | None = None, **kwargs: Any
) -> LinearOperator:
    """A DeepInverse ``LinearPhysics`` as a :class:`~lorun_peft.physics.LinearOperator` (``WrappedOperator``).

    Images are ``(B, C, H, W)``; measurements keep the physics' own layout. The HQS step calls the physics'
    ``prox_l2(z, y, gamma=1/mu)``. ``factory``/``args``: a factory registered with
    :func:`~lorun_peft.physics.register_operator_factory` that rebuilds ``physics`` from JSON arguments,
    so that a model built on it can be saved and reloaded. Without them, ``deepinv.physics.Inpainting``
    and ``Downsampling`` use the built-in ``"deepinv.Inpainting"``/``"deepinv.Downsampling"`` factories
    (their tensors travel in the state dict); other physics work but cannot be saved. ``kwargs``:
    ``cg_tol``/``cg_max_iter`` of :func:`~lorun_peft.physics.as_operator`.
    """
    dinv = import_deepinv()
    if not isinstance(physics, dinv.physics.LinearPhysics):
        raise TypeError(f"from_deepinv needs a deepinv.physics.LinearPhysics, got {type(physics).__name__}")
    if factory is None and args is None:
        factory, args = _known_factory(physics)
    return as_operator(physics, factory=factory, args=args, **kwargs)


# -- LoRun -> DeepInverse ---------------------------------------------------------------------------------

_PHYSICS_CLASS: type | None = None


def _mu_from_gamma(gamma: Any, batch: int) -> Tensor | float:
    """DeepInverse's ``gamma`` (a number, one value or one per batch item) as our ``mu = 1 / gamma``."""
    if isinstance(gamma, Tensor):
        if gamma.numel() == 1:
            gamma = gamma.reshape(())
        elif gamma.ndim >= 1 and gamma.shape[0] == batch and gamma.numel() == batch:
            gamma = gamma.reshape(batch)
        else:
            raise ValueError(
                f"gamma has shape {tuple(gamma.shape)}; expected a number, a one-element tensor or one value "
                f"per batch item ({batch})"
            )
        return 1.0 / gamma
    value = float(gamma)
    if not value > 0:
        raise ValueError(f"gamma must be > 0, got {value}")
    return 1.0 / value


def _lorun_physics_class() -> type:
    """``LoRunPhysics``: built on first use, since its base class is DeepInverse's ``LinearPhysics``."""
    global _PHYSICS_CLASS
    if _PHYSICS_CLASS is not None:
        return _PHYSICS_CLASS
    dinv = import_deepinv()

    class LoRunPhysics(dinv.physics.LinearPhysics):
        """A lorun_peft :class:`LinearOperator` as a DeepInverse ``LinearPhysics`` (see ``to_deepinv``)."""

        def __init__(self, operator: LinearOperator, **kwargs: Any) -> None:
            kwargs.setdefault("device", _reference(operator)[1])
            super().__init__(**kwargs)
            self.operator = operator

        def A(self, x: Tensor, **kwargs: Any) -> Tensor:
            return self.operator.A(x)

        def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:
            return self.operator.A_adjoint(y)

        def prox_l2(self, z: Any, y: Tensor, gamma: Any, **kwargs: Any) -> Tensor:
            """``argmin_x gamma/2 ||A x - y||^2 + 1/2 ||x - z||^2`` = our ``hqs_step(z, y, mu=1/gamma)``.

            ``z`` None or a number: a constant image of ``A^T y``'s shape. DeepInverse's solver options
            (``solver``, ``max_iter``, ``tol``) are ignored: the operator's own step is used.
            """
            if z is None or isinstance(z, (int, float)):
                z = torch.full_like(self.operator.A_adjoint(y), 0.0 if z is None else float(z))
            return self.operator.hqs_step(z, y, _mu_from_gamma(gamma, z.shape[0]))

    LoRunPhysics.__module__ = __name__
    LoRunPhysics.__qualname__ = "LoRunPhysics"
    _PHYSICS_CLASS = LoRunPhysics
    return LoRunPhysics


def __getattr__(name: str) -> Any:
    if name == "LoRunPhysics":  # so that pickle finds the class built on first use
        return _lorun_physics_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_deepinv(op: Any, **kwargs: Any) -> Any:
    """``op`` as a ``deepinv.physics.LinearPhysics``: ``A``, ``A_adjoint`` and ``prox_l2`` are ``op``'s.

    ``op``: one of our operators (``BlockCS``, ``CASSI``, ``BlurDownsample``, ...). It becomes a submodule
    of the returned physics, so its tensors follow ``.to()`` and are shared, not copied. A DeepInverse physics
    (or one wrapped by :func:`from_deepinv`) is returned as it is. ``kwargs`` go to ``LinearPhysics``
    (``noise_model``, ``img_size``, ``max_iter``/``tol``/``solver`` of its ``A_dagger``, ...).
    """
    dinv = import_deepinv()
    if isinstance(op, dinv.physics.LinearPhysics):
        return op
    if isinstance(op, WrappedOperator) and isinstance(op.operator, dinv.physics.LinearPhysics) and not kwargs:
        return op.operator
    if not isinstance(op, LinearOperator):
        raise TypeError(
            f"to_deepinv needs a lorun_peft LinearOperator, got {type(op).__name__} (wrap objects with "
            "A/A_adjoint with lorun_peft.physics.as_operator first)"
        )
    return _lorun_physics_class()(op, **kwargs)

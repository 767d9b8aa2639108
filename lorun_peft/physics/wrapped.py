"""Bring your own operator: anything with ``A(x)`` and ``A_adjoint(y)`` unfolds with LoRun.

The unfolding loop needs a :class:`~lorun_peft.physics.base.LinearOperator`. :func:`as_operator` turns any
object with ``A`` and ``A_adjoint`` (a DeepInverse ``LinearPhysics``, or a ten-line class of your own)
into one. Its HQS step is the object's ``prox_l2(z, y, gamma)`` when it has one (DeepInverse's convention:
``gamma = 1 / mu``), else conjugate gradients on ``(A^T A + mu I) x = A^T y + mu z``.

A model must be rebuilt from its ``config.json`` when it is loaded, so a wrapped operator saves the name
of a factory registered with :func:`register_operator_factory` and the factory's JSON arguments. Class
paths are not saved: importing and calling whatever a downloaded ``config.json`` names would run code
that the user never chose. Tensors the object holds (masks, kernels) travel in the state dict when the
object is an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .base import (
    LinearOperator,
    Scalar,
    as_batch_scalar,
    check_float_tensor,
    check_image_tensor,
    check_step_size,
    register_physics,
)

__all__ = [
    "OPERATOR_FACTORIES",
    "WrappedOperator",
    "as_operator",
    "conjugate_gradient",
    "register_operator_factory",
]

#: Factory name -> callable building the wrapped object from JSON keyword arguments.
OPERATOR_FACTORIES: dict[str, Callable[..., Any]] = {}


def register_operator_factory(name: str, factory: Callable[..., Any] | None = None):
    """Register ``factory(**args)`` under ``name`` so wrapped operators built by it can be saved and loaded.

    Usable as a decorator (``@register_operator_factory("inpainting")``). Loading a model whose physics
    names an unregistered factory fails with a message saying which one to register.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an operator factory needs a non-empty string name, got {name!r}")

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(function):
            raise TypeError(f"operator factory {name!r} must be callable, got {type(function).__name__}")
        OPERATOR_FACTORIES[name] = function
        return function

    return register if factory is None else register(factory)


def _registered_factory(name: Any) -> Callable[..., Any]:
    """The factory registered under ``name``; a ``ValueError`` saying how to register it otherwise.

    ``deepinv.*`` names are registered by :mod:`lorun_peft.physics.deepinv`, imported here on first need
    (a fixed module of this package: nothing a config names is ever imported).
    """
    if isinstance(name, str) and name.startswith("deepinv.") and name not in OPERATOR_FACTORIES:
        importlib.import_module(f"{__package__}.deepinv")  # registers the deepinv.* factories
    if name not in OPERATOR_FACTORIES:
        raise ValueError(
            f"operator factory {name!r} is not registered in this process: call "
            f"lorun_peft.physics.register_operator_factory({name!r}, fn) first (registered: "
            f"{sorted(OPERATOR_FACTORIES) or 'none'})"
        )
    return OPERATOR_FACTORIES[name]


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], rhs: Tensor, x0: Tensor, tol: float = 1e-6, max_iter: int = 100
) -> Tensor:
    """Solve ``apply(x) = rhs`` for a symmetric positive definite ``apply``, per batch item.

    Stops when every item's residual norm is below ``tol`` times its right-hand side's norm, or after
    ``max_iter`` iterations. Differentiable (plain tensor operations), so gradients reach ``mu``.
    """
    dims = tuple(range(1, rhs.ndim))

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dim=dims, keepdim=True)

    x = x0
    r = rhs - apply(x)
    p = r
    rs = dot(r, r)
    threshold = (tol**2) * dot(rhs, rhs).clamp_min(torch.finfo(rhs.dtype).tiny)
    for _ in range(max_iter):
        if bool((rs <= threshold).all()):
            break
        ap = apply(p)
        alpha = rs / dot(p, ap).clamp_min(torch.finfo(rhs.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = dot(r, r)
        p = r + (rs_new / rs.clamp_min(torch.finfo(rhs.dtype).tiny)) * p
        rs = rs_new
    return x


@register_physics
class WrappedOperator(LinearOperator):
    """A :class:`LinearOperator` around an object with ``A`` and ``A_adjoint`` (see :func:`as_operator`)."""

    physics_type = "wrapped"

    def __init__(
        self,
        operator: Any,
        *,
        factory: str | None = None,
        args: dict[str, Any] | None = None,
        cg_tol: float = 1e-6,
        cg_max_iter: int = 100,
    ) -> None:
        super().__init__()
        for method in ("A", "A_adjoint"):
            if not callable(getattr(operator, method, None)):
                raise TypeError(
                    f"as_operator needs an object with callable A(x) and A_adjoint(y); "
                    f"{type(operator).__name__} has no {method}"
                )
        if factory is not None:
            _registered_factory(factory)
        if args is not None:
            try:
                args = json.loads(json.dumps(args))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"operator factory args must be JSON-serialisable: {exc}") from exc
        check_step_size("cg_tol", cg_tol)
        if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, int) or cg_max_iter < 1:
            raise ValueError(f"cg_max_iter must be an int >= 1, got {cg_max_iter!r}")
        self.operator = operator  # an nn.Module registers as a submodule: its buffers are saved
        self.factory, self.args = factory, dict(args or {})
        self.cg_tol, self.cg_max_iter = float(cg_tol), cg_max_iter
        self._register_state_dict_hook(_contiguous_state)

    def A(self, x: Tensor) -> Tensor:
        check_image_tensor(x, "image")
        return self.operator.A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return self.operator.A_adjoint(y)

    def init(self, y: Tensor) -> Tensor:
        """The object's own ``init(y)`` when it has one (a better first estimate), else ``A^T y``."""
        self.check_measurement(y)
        own = getattr(self.operator, "init", None)
        return own(y) if callable(own) else self.operator.A_adjoint(y)

    def hqs_step(self, z: Tensor, y: Tensor, mu: Scalar) -> Tensor:
        """``(A^T A + mu I)^-1 (A^T y + mu z)``: the object's ``prox_l2(z, y, 1/mu)``, else CG from ``z``."""
        check_step_size("mu", mu, like=z)
        check_image_tensor(z, "iterate")
        self.check_measurement(y)
        mu_b = as_batch_scalar(mu, z)
        prox = getattr(self.operator, "prox_l2", None)
        if callable(prox):
            return prox(z, y, 1.0 / mu_b)
        rhs = self.operator.A_adjoint(y) + mu_b * z
        return conjugate_gradient(
            lambda v: self.operator.A_adjoint(self.operator.A(v)) + mu_b * v,
            rhs,
            z,
            self.cg_tol,
            self.cg_max_iter,
        )

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        probe = self._probe(measurement_shape)
        return tuple(self.operator.A_adjoint(probe).shape)

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.operator.A(self._probe(image_shape)).shape)

    def _probe(self, shape: tuple[int, ...]) -> Tensor:
        reference = next(iter([*self.parameters(), *self.buffers()]), None)
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else None
        device = reference.device if reference is not None else None
        with torch.no_grad():
            return torch.zeros(tuple(shape), dtype=dtype, device=device)

    def check_measurement(self, y: Tensor) -> None:
        """The object's own ``check_measurement(y)`` when it has one, else: a floating tensor with a batch
        axis and no empty axis (its layout is the wrapped object's)."""
        check_float_tensor(y, "measurement")
        own = getattr(self.operator, "check_measurement", None)
        if callable(own):
            own(y)
            return
        if y.ndim < 2 or 0 in y.shape:
            raise ValueError(
                f"measurement has shape {tuple(y.shape)}; expected (B, ...) with every axis >= 1"
            )

    def get_config(self) -> dict[str, Any]:
        if self.factory is None:
            raise ValueError(
                f"this wrapped {type(self.operator).__name__} cannot be saved or rebuilt: build it with "
                "as_operator(obj, factory=NAME, args={...}) after register_operator_factory(NAME, fn), so "
                "that loading can call fn(**args) (class paths are never imported from a config)"
            )
        return {
            "type": self.physics_type,
            "factory": self.factory,
            "args": dict(self.args),
            "cg_tol": self.cg_tol,
            "cg_max_iter": self.cg_max_iter,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WrappedOperator:
        factory = config.get("factory")
        build = _registered_factory(factory)
        args = config.get("args") or {}
        return cls(
            build(**args),
            factory=factory,
            args=args,
            cg_tol=config.get("cg_tol", 1e-6),
            cg_max_iter=config.get("cg_max_iter", 100),
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> WrappedOperator:
        """Device and dtype moves keep complex buffers complex (``.to(float64)`` gives ``complex128``).

        ``nn.Module.to(dtype)`` casts a complex buffer to the real dtype and drops its imaginary part;
        an FFT-based operator would then compute something else without a word.
        """
        moved = []
        for module in self.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_complex():
                    module._buffers[name] = torch.view_as_real(buffer.resolve_conj())  # torch.conj views
                    moved.append((module, name))
        try:
            return super()._apply(fn, recurse)
        finally:
            for module, name in moved:
                real = module._buffers[name]
                if real.dtype not in (torch.float32, torch.float64):
                    real = real.float()  # no complex type for half precision: complex64
                module._buffers[name] = torch.view_as_complex(real.contiguous())


def _contiguous_state(module: nn.Module, state: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: safetensors stores contiguous tensors only (some operators keep strided views)."""
    for key, value in state.items():
        if key.startswith(prefix) and isinstance(value, Tensor) and not value.is_contiguous():
            state[key] = value.contiguous()


def as_operator(
    obj: Any,
    *,
    factory: str | None = None,
    args: dict[str, Any] | None = None,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 100,
) -> LinearOperator:
    """``obj`` as a :class:`LinearOperator`: returned as is when it is one, else wrapped.

    ``obj`` needs callable ``A(x)`` and ``A_adjoint(y)`` on ``(B, C, H, W)`` images; ``prox_l2(z, y,
    gamma)`` is used for the HQS step when present, else conjugate gradients (``cg_tol`` relative
    residual, at most ``cg_max_iter`` iterations). ``factory``/``args``: the name of a factory registered
    with :func:`register_operator_factory` and its JSON arguments, which rebuild ``obj`` when a saved
    model is loaded. A ``LoRunModel`` needs them (its ``config.json`` must rebuild the physics);
    without them the operator still works on its own (data steps, :meth:`operator_norm`, ...).
    """
    if isinstance(obj, LinearOperator):
        return obj
    if factory is None and args is not None:
        raise ValueError("args= is only used with factory=: the name of a registered operator factory")
    return WrappedOperator(obj, factory=factory, args=args, cg_tol=cg_tol, cg_max_iter=cg_max_iter)

"""The one interface every degradation operator implements.

A deep unfolding network only ever talks to this interface: ``A``, ``A_adjoint``, the PGD
gradient step (paper eq. 5), the HQS data step (eq. 9), the initial estimate and ``measure``.
The loop therefore never branches on the task. Operators are ``nn.Module`` so that learnable
parts (a learned CS matrix) and fixed parts (a CASSI mask, a blur kernel, as buffers) travel with
the model's state dict, device and dtype.

Every operator round-trips through ``get_config()`` / ``physics_from_config``: the config holds
what is needed to rebuild the module's structure; tensors live in the state dict.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Scalar = float | Tensor


def as_batch_scalar(value: Scalar, reference: Tensor) -> Tensor | float:
    """Broadcast a step size (number, 0-d or (B,) tensor) against a (B, ...) tensor.

    A Python/NumPy number becomes a ``float``: a NumPy array (even 0-d) times a tensor is not a tensor.
    """
    if isinstance(value, Tensor):
        return value.view(-1, *([1] * (reference.ndim - 1))) if value.ndim == 1 else value
    return float(value)


def check_step_size(name: str, value: Scalar, allow_zero: bool = False, like: Any = None) -> None:
    """``ValueError`` for a Python/NumPy step size that is NaN, infinite or not positive.

    Tensors (learned step sizes, positive by their parametrisation) are not inspected for their values:
    that would synchronise the device at every stage. Their dtype and shape are (no synchronisation):
    a real 0-d tensor, or a 1-d one with one value per batch item of ``like`` (the iterate) or a single
    value; anything else would broadcast the batch into a wrong shape or fail inside the step's math.
    """
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number or a real tensor, got a {value.dtype} tensor")
        batch = like.shape[0] if isinstance(like, Tensor) and like.ndim >= 1 else None
        length = value.shape[0] if value.ndim == 1 else 1
        if value.ndim > 1 or length == 0 or (batch is not None and length not in (1, batch)):
            lengths = ">= 1" if batch is None else " or ".join(map(str, sorted({1, batch})))
            raise ValueError(
                f"{name} tensor has shape {tuple(value.shape)}; expected a 0-d tensor or a 1-d tensor of "
                f"length {lengths} (one value per batch item)"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if getattr(getattr(value, "dtype", None), "kind", "f") in ("b", "c"):  # NumPy bool or complex
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {number}")


def check_float_tensor(x: Any, what: str = "image") -> None:
    """``TypeError`` unless ``x`` is a real floating-point ``torch.Tensor`` (the type half of the checks).

    Operators run it before their own shape rules, so that a list or an integer/bool/complex tensor is
    named as such rather than failing on a missing ``.shape`` or deep inside a convolution or FFT.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor (e.g. x.float() / 255 for 8-bit data), got {x.dtype}"
        )


def check_image_tensor(x: Any, what: str = "image", layout: str = "(B, C, H, W)") -> None:
    """``TypeError``/``ValueError`` unless ``x`` is a floating tensor of ``layout`` with no empty axis.

    The one input check every operator runs on images (``A``) and measurements (``A_adjoint``,
    ``init``, the data steps) after its own shape rules: an integer tensor would be sampled with
    integer weights and an empty one fails deep inside a convolution, fold or FFT. ``layout`` names
    the axes (its comma count + 1 is the expected number of dimensions).
    """
    check_float_tensor(x, what)
    ndim = layout.count(",") + 1
    if x.ndim != ndim or 0 in x.shape:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected {layout} with every axis >= 1")


def as_float_tensor(value: Any, name: str = "tensor") -> Tensor:
    """A detached copy of ``value`` as a tensor; floating dtypes are kept, others become the default dtype.

    ``TypeError`` for what is not a real numeric array (complex, strings, objects); ``ValueError``
    (naming ``name``) when it is empty or holds a NaN or infinite value: an operator built from one
    would return NaN for every input.
    """
    try:
        tensor = torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError) as exc:  # str, object, ragged lists
        raise TypeError(
            f"{name} must be a real numeric array (tensor, NumPy array or nested lists of numbers), "
            f"got {type(value).__name__}"
        ) from exc
    if tensor.is_complex():
        raise TypeError(f"{name} has complex dtype {tensor.dtype}; expected real numbers")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); expected a non-empty array")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s); expected finite numbers")
    return tensor.clone()


class LinearOperator(nn.Module):
    """A linear degradation ``y = A x + n`` with the data steps of PGD and HQS.

    Subclasses implement :meth:`A`, :meth:`A_adjoint`, :meth:`hqs_step`, :meth:`image_shape`,
    :meth:`measurement_shape` and :meth:`get_config`; the rest follows from those.
    """

    #: Key of this operator in :data:`PHYSICS_REGISTRY` (and in saved configs).
    physics_type: ClassVar[str] = ""

    @property
    def grid_factor(self) -> int | None:
        """Image pixels per measurement cell along H and W when a window of the measurement's last two
        axes is the measurement of the matching image window (up to a border), so ``restore`` may tile;
        None (the default) when the operator couples distant pixels (CASSI's mask and dispersion)."""
        return None

    def A(self, x: Tensor) -> Tensor:
        """Forward operator: image ``(B, C, H, W)`` to measurement."""
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Exact adjoint of :meth:`A`: measurement to image space."""
        raise NotImplementedError

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """``A x - y``, with a ``ValueError`` (not silent broadcasting) when the shapes disagree.

        ``y`` passes :meth:`check_measurement` first: an integer or complex ``y`` of the right shape would
        otherwise be promoted silently into the data step.
        """
        self.check_measurement(y)
        ax = self.A(x)
        if ax.shape != y.shape:
            raise ValueError(
                f"measurement has shape {tuple(y.shape)}, but A maps the image of shape {tuple(x.shape)} "
                f"to {tuple(ax.shape)}; expected y of shape {tuple(ax.shape)}"
            )
        return ax - y

    def gradient_step(self, x: Tensor, y: Tensor, rho: Scalar) -> Tensor:
        """PGD data step (eq. 5): ``x - rho * A^T (A x - y)``."""
        check_step_size("rho", rho, like=x)
        return x - as_batch_scalar(rho, x) * self.A_adjoint(self.residual(x, y))

    def hqs_step(self, z: Tensor, y: Tensor, mu: Scalar) -> Tensor:
        """HQS data step (eq. 9): ``argmin_x ||y - A x||^2 + mu ||x - z||^2``."""
        raise NotImplementedError

    def init(self, y: Tensor) -> Tensor:
        """The field's initial estimate from a measurement (default ``A^T y``)."""
        return self.A_adjoint(y)

    def measure(
        self, x: Tensor, noise_sigma: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Simulate ``y = A x + n`` with white Gaussian noise of standard deviation ``noise_sigma``.

        ``x`` must be a floating-point tensor (an integer image would be measured with a ``Phi`` cast to
        integers, i.e. zeros); ``noise_sigma`` a Python or NumPy number, finite and >= 0 (for a noise
        level per batch item, add the noise to ``measure(x)`` yourself).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(
                "measure() needs a floating-point image tensor (e.g. x.float() / 255 for 8-bit images), "
                f"got {kind}"
            )
        if isinstance(noise_sigma, Tensor):
            raise TypeError(
                "noise_sigma must be a Python or NumPy number, got a tensor of shape "
                f"{tuple(noise_sigma.shape)}; for a noise level per batch item, add the noise to measure(x)"
            )
        check_step_size("noise_sigma", noise_sigma, allow_zero=True)
        noise_sigma = float(noise_sigma)  # a NumPy array (even 0-d) times a tensor is not a tensor
        y = self.A(x)
        if noise_sigma > 0:
            noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
            y = y + noise_sigma * noise
        return y

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the image that a measurement of ``measurement_shape`` came from."""
        raise NotImplementedError

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the measurement of an image of ``image_shape``."""
        raise NotImplementedError

    def check_measurement(self, y: Tensor) -> None:
        """Raise ``ValueError`` naming the expected layout when ``y`` cannot be a measurement."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable structure of this operator (``{"type": ..., **kwargs}``)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearOperator:
        """Build the operator's structure from ``get_config()`` minus ``"type"``; tensors load after."""
        return cls(**config)

    def to_deepinv(self, **kwargs: Any) -> Any:
        """This operator as a ``deepinv.physics.LinearPhysics`` (``pip install lorun-peft[deepinv]``).

        DeepInverse's algorithms, ``Trainer`` and tools then run on it; its ``prox_l2(z, y, gamma)`` is
        :meth:`hqs_step` with ``mu = 1 / gamma``. See :func:`lorun_peft.physics.deepinv.to_deepinv`.
        """
        from .deepinv import to_deepinv  # deepinv is optional: imported on first use only

        return to_deepinv(self, **kwargs)


PHYSICS_REGISTRY: dict[str, type[LinearOperator]] = {}


def register_physics(cls: type[LinearOperator]) -> type[LinearOperator]:
    """Class decorator: make an operator rebuildable from its config."""
    if not cls.physics_type:
        raise ValueError(f"{cls.__name__} must set physics_type")
    PHYSICS_REGISTRY[cls.physics_type] = cls
    return cls


def physics_from_config(config: dict[str, Any]) -> LinearOperator:
    """Rebuild an operator from :meth:`LinearOperator.get_config` output (tensors come from a state dict)."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in PHYSICS_REGISTRY:
        raise ValueError(f"unknown physics type {kind!r}; expected one of {sorted(PHYSICS_REGISTRY)}")
    return PHYSICS_REGISTRY[kind].from_config(config)

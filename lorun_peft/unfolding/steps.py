"""Per-stage step parameters and the task parameters of one unfolding network.

The two unfolded algorithms of the paper (Section III-C) differ only in their data step and in how
the stage's noise level follows from its step parameters:

- PGD (eq. 5-7): ``z_k = x_{k-1} - rho_k A^T (A x_{k-1} - y)``, ``x_k = D_k(z_k)``, noise level
  ``sqrt(rho_k * lambda_k)``.
- HQS (eq. 9-11): ``x_k = (A^T A + mu_k I)^-1 (A^T y + mu_k w_{k-1})``, ``w_k = D_k(x_k)``, noise level
  ``sqrt(lambda_k / mu_k)``.

A third, ``"gap"``, is HQS on an accumulated measurement, the accelerated update of GAP (Liao, Li and
Carin 2014; GAP-TV, Yuan 2016): ``y_k = y_{k-1} + (y - A w_{k-1})`` with ``y_0 = y`` and ``w_0`` the
initial estimate, then the HQS step with ``y_k`` in place of ``y``. The residual the denoisers leave
is fed back into later stages instead of being projected away once; it has HQS's parameters.

:class:`StageSteps` holds ``rho_k``/``mu_k`` and ``lambda_k`` for the K stages, kept positive as the
softplus of raw parameters initialised at ``softplus^-1(0.5)`` so every step starts at 0.5
(Algorithm 1, line 3). :class:`TaskParameters` bundles a physics operator with its steps: the phase-1
model owns one, and every adapter set (a swappable task mode) owns another.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorun_peft.physics.base import LinearOperator

ALGORITHMS = ("pgd", "hqs", "gap")
"""The unfolded algorithms: PGD (eq. 5-7), HQS (eq. 9-11) and HQS on an accumulated measurement."""


def inverse_softplus(value: float) -> float:
    """``softplus^-1(value) = log(exp(value) - 1)`` for a finite ``value > 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"a step parameter must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a step parameter must start at a finite positive number (step_init), got {value}")
    return value + math.log(-math.expm1(-value))


class StageSteps(nn.Module):
    """Learnable positive step parameters of K stages.

    Stored as ``raw_rho`` (PGD) or ``raw_mu`` (HQS, GAP), and ``raw_lambda``, each of shape ``(K,)``; the
    values used are ``softplus(raw)``. Softplus keeps them positive without clamping, so gradients
    never vanish at a boundary.
    """

    def __init__(self, num_stages: int, algorithm: str, init: float = 0.5) -> None:
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        self.algorithm = algorithm
        self.num_stages = num_stages
        self.init = float(init)
        self.step_name = "rho" if algorithm == "pgd" else "mu"
        raw = inverse_softplus(init)
        self.register_parameter(f"raw_{self.step_name}", nn.Parameter(torch.full((num_stages,), raw)))
        self.raw_lambda = nn.Parameter(torch.full((num_stages,), raw))

    def reset_parameters(self) -> None:
        """Set every step back to ``init``."""
        raw = inverse_softplus(self.init)
        with torch.no_grad():
            getattr(self, f"raw_{self.step_name}").fill_(raw)
            self.raw_lambda.fill_(raw)

    @property
    def step(self) -> Tensor:
        """``rho`` (PGD) or ``mu`` (HQS, GAP) of every stage, ``(K,)``."""
        return F.softplus(getattr(self, f"raw_{self.step_name}"))

    @property
    def lam(self) -> Tensor:
        """``lambda`` of every stage, ``(K,)``."""
        return F.softplus(self.raw_lambda)

    def sigma(self) -> Tensor:
        """Noise level per stage, ``(K,)``: ``sqrt(rho*lambda)`` (PGD), ``sqrt(lambda/mu)`` (HQS, GAP)."""
        if self.algorithm == "pgd":
            return torch.sqrt(self.step * self.lam)
        return torch.sqrt(self.lam / self.step)

    def as_dict(self) -> dict[str, list[float]]:
        """Current values, for logs and reports: ``{"rho"|"mu": [...], "lambda": [...], "sigma": [...]}``."""
        with torch.no_grad():
            return {
                self.step_name: self.step.tolist(),
                "lambda": self.lam.tolist(),
                "sigma": self.sigma().tolist(),
            }

    def extra_repr(self) -> str:
        return f"algorithm={self.algorithm}, num_stages={self.num_stages}, init={self.init}"


class TaskParameters(nn.Module):
    """A physics operator and the step parameters of the K stages that use it.

    The non-LoRA part of a task: a learned CS matrix lives in ``physics``, masks and kernels are its
    buffers, ``rho``/``mu``/``lambda`` live in ``steps``.
    """

    def __init__(self, physics: LinearOperator, steps: StageSteps) -> None:
        super().__init__()
        if not isinstance(physics, LinearOperator):
            raise TypeError(f"physics must be a lorun_peft LinearOperator, got {type(physics).__name__}")
        self.physics = physics
        self.steps = steps

    @contextlib.contextmanager
    def swapped_physics(self, physics: LinearOperator) -> Iterator[LinearOperator]:
        """Context: use ``physics`` (e.g. a mask that fits a test item), and put the original back on exit."""
        if not isinstance(physics, LinearOperator):
            raise TypeError(f"physics must be a lorun_peft LinearOperator, got {type(physics).__name__}")
        original = self.physics
        self.physics = physics
        try:
            yield physics
        finally:
            self.physics = original

    def initial_estimate(self, y: Tensor) -> Tensor:
        """``x_0 = physics.init(y)``, in full precision (see :meth:`data_step`)."""
        with physics_in_fp32(y):
            return self.physics.init(y)

    def data_step(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        """Stage ``k``'s data step on the previous estimate ``x`` ``(B, C, H, W)``.

        PGD: the gradient step of eq. 5 with ``rho_k``; HQS: the closed-form step of eq. 9 with ``mu_k``
        (GAP: the same on the accumulated measurement ``y`` that :meth:`accumulate` gives). Runs in
        ``y``'s precision with autocast off and on a contiguous ``x``, whatever precision and layout the
        denoiser before it used (bf16 autocast, channels_last).
        """
        x = x.to(dtype=y.dtype).contiguous()
        with physics_in_fp32(y):
            step = self.steps.step[k]
            if self.steps.algorithm == "pgd":
                return self.physics.gradient_step(x, y, step)
            return self.physics.hqs_step(x, y, step)

    def accumulate(self, accumulated: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """GAP's measurement update ``y_k = y_{k-1} + (y - A x)`` for the estimate ``x`` before stage k.

        In ``y``'s precision with autocast off, like :meth:`data_step`.
        """
        x = x.to(dtype=y.dtype).contiguous()
        with physics_in_fp32(y):
            return accumulated + (y - self.physics.A(x))


@contextlib.contextmanager
def physics_in_fp32(reference: Tensor) -> Iterator[None]:
    """Context: autocast off on ``reference``'s device, so physics runs in its tensors' own precision.

    Why (measured against float64 on Set11 images, 25 % block CS, b = 32; benchmarks/bench_training_speed.py
    ``--physics-only``): in bf16, ``Phi x`` carries a relative error of 3e-3, and the data misfit
    ``Phi x - y`` that a PGD step follows, for an estimate 1 % off, is 18 % wrong. CASSI's mask-shift-sum
    in bf16 tensors: 4e-3 and a misfit 157 % wrong (28 bands summed). SR's steps are FFT solves, and CPU
    FFTs have no bf16 kernels at all. fp32 costs little: the physics is a small share of a stage's work.
    """
    with torch.autocast(device_type=reference.device.type, enabled=False):
        yield

"""Shared helpers for the physics tests: the shared-data location, dense matrices, the dot test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lorun_peft.physics import LinearOperator


def shared_data_dir() -> Path:
    """``$LORUN_DATA_DIR`` or ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("LORUN_DATA_DIR")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def shared_file(*parts: str) -> Path:
    """A file under the shared data folder, or skip the test saying which file is missing."""
    path = shared_data_dir().joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (set LORUN_DATA_DIR to run this test)")
    return path


def dense_matrix(op: LinearOperator, image_shape: tuple[int, ...]) -> torch.Tensor:
    """The ``(m, n)`` matrix of ``op.A`` on one image of ``image_shape`` (leading 1)."""
    n = 1
    for size in image_shape[1:]:
        n *= size
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *image_shape[1:])
    return op.A(basis).reshape(n, -1).T


def dense_hqs(matrix: torch.Tensor, z: torch.Tensor, y: torch.Tensor, mu: float) -> torch.Tensor:
    """``solve(A^T A + mu I, A^T y + mu z)`` for one item, flattened."""
    n = matrix.shape[1]
    lhs = matrix.T @ matrix + mu * torch.eye(n, dtype=matrix.dtype)
    return torch.linalg.solve(lhs, matrix.T @ y.reshape(-1) + mu * z.reshape(-1))


def assert_adjoint(op: LinearOperator, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """``|<A x, y> - <x, A^T y>| <= 1e-10 |<A x, y>|`` for a random ``y`` (``x`` float64).

    ``A^T y`` may live on a larger (padded) grid than ``x``; the extra rows/columns meet zeros in ``x``.
    """
    ax = op.A(x)
    y = torch.randn(ax.shape, dtype=torch.float64, generator=generator)
    aty = op.A_adjoint(y)
    lhs = (ax * y).sum()
    rhs = (x * aty[..., : x.shape[-2], : x.shape[-1]]).sum()
    assert torch.abs(lhs - rhs) <= 1e-10 * torch.abs(lhs), (float(lhs), float(rhs))

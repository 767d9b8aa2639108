"""Block compressive sensing: ``y = Phi x`` applied to every non-overlapping ``b x b`` block.

The CS task of the paper (ISTA-Net / AMP-Net / DGU-Net+ protocol): an image is cut into ``b x b``
blocks (b = 32, or 33 for ISTA-Net), each block is vectorised row-major and multiplied by an
``(n, b*b)`` sampling matrix ``Phi`` with ``n = ceil(ratio * b*b)``. ``A`` is a stride-``b``
convolution with ``Phi.view(n, 1, b, b)`` and ``A^T`` the transposed convolution with the same
weights. Images whose sides are not multiples of ``b`` are zero-padded at the bottom/right inside
``A``; ``A_adjoint``, ``init`` and ``hqs_step`` work on that padded grid (stateless: nothing about
the original size is remembered), and the caller crops the final estimate back with
``x[..., :H, :W]``. ``Phi`` is an ``nn.Parameter`` when learned, a buffer when fixed; both live in
the state dict under the key ``Phi``.
"""

from __future__ import annotations

import math
import re
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    LinearOperator,
    Scalar,
    as_float_tensor,
    check_float_tensor,
    check_image_tensor,
    check_step_size,
    register_physics,
)
from .io import load_mat_array

#: Row counts of ISTA-Net's fixed 33x33 matrices ``phi_0_{R}_1089.mat`` (CS ratio R in %). They are
#: a table, not a rule: 1 % -> 10 and 4 % -> 43 rows are below ceil(R % * 1089) (11, 44).
ISTA_NET_NUM_ROWS: dict[int, int] = {1: 10, 4: 43, 10: 109, 25: 272, 30: 327, 40: 436, 50: 545}

_CEIL_GUARD = (
    1e-9  # relative to b*b: ceil(ratio*b*b) ignores float error such as 0.07*100 = 7.000000000000001
)


def num_measurements(ratio: float, block_size: int) -> int:
    """Rows of the sampling matrix: ``ceil(ratio * b*b)``, at least 1.

    ``ratio * b*b`` is lowered by ``1e-9 * b*b`` before the ceiling, so that a product that float
    arithmetic puts a hair above an integer (``0.07 * 100 = 7.000000000000001``) is not rounded up to
    the next one. Examples: b = 32: 1 % -> 11, 10 % -> 103, 25 % -> 256; b = 33: 10 % -> 109,
    25 % -> 273, 30 % -> 327 (use ``num_rows=`` or :data:`ISTA_NET_NUM_ROWS` for ISTA-Net's table).
    """
    _check_ratio(ratio)
    _check_block_size(block_size)
    area = block_size * block_size
    return max(1, math.ceil(ratio * area - _CEIL_GUARD * area))


def _describe_step(mu: Any) -> str:
    """A step size for an error message: the number, or the range of a per-item tensor."""
    if isinstance(mu, Tensor) and mu.numel() > 1:
        return f"[{float(mu.min()):.3g}, {float(mu.max()):.3g}]"
    return f"{float(mu):.3g}"


def _check_ratio(ratio: float) -> None:
    """Any real number (Python or NumPy) in (0, 1]; bools, strings and tensors are refused."""
    number = isinstance(ratio, (int, float, np.integer, np.floating)) and not isinstance(
        ratio, (bool, np.bool_)
    )
    if not number or not 0 < float(ratio) <= 1:
        raise ValueError(f"CS ratio must be a number in (0, 1], got {ratio!r}")


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")


@register_physics
class BlockCS(LinearOperator):
    """Block CS with an ``(n, b*b)`` sampling matrix ``Phi`` (learnable by default).

    Args:
        ratio: CS ratio in (0, 1]; ``n = ceil(ratio * b*b)`` unless ``matrix`` or ``num_rows`` set it.
        block_size: block side ``b`` (32; 33 for ISTA-Net).
        channels: image channels ``C``; each channel is sampled with the same ``Phi``.
        learnable: ``Phi`` as an ``nn.Parameter`` (default: True without ``matrix``, False with one).
        matrix: a given ``(n, b*b)`` matrix (e.g. ISTA-Net's); its ``n`` must be within 1 of ``ratio*b*b``.
        num_rows: force ``n`` (e.g. :data:`ISTA_NET_NUM_ROWS`); saved in the config.

    A random ``Phi`` has i.i.d. ``N(0, 1/b^2)`` entries: rows of unit expected norm, so
    ``Phi Phi^T ~ I`` as for ISTA-Net's orthonormal matrices and step sizes near 1 are stable.
    Shapes: image ``(B, C, H, W)``; measurement ``(B, C*n, ceil(H/b), ceil(W/b))``, channel ``c``
    at ``[c*n, (c+1)*n)``.
    """

    physics_type = "block_cs"

    def __init__(
        self,
        ratio: float,
        block_size: int = 32,
        channels: int = 1,
        learnable: bool | None = None,
        matrix: Tensor | None = None,
        num_rows: int | None = None,
    ) -> None:
        super().__init__()
        _check_ratio(ratio)
        _check_block_size(block_size)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        area = block_size * block_size
        if matrix is not None:
            matrix = as_float_tensor(matrix, "CS sampling matrix")
            if matrix.ndim != 2 or matrix.shape[1] != area:
                raise ValueError(
                    f"matrix has shape {tuple(matrix.shape)}, "
                    f"expected (n, {area}) for {block_size}x{block_size} blocks"
                )
            rows = matrix.shape[0]
            if num_rows is not None and num_rows != rows:
                raise ValueError(f"num_rows={num_rows} but the matrix has {rows} rows")
            if abs(rows - ratio * area) >= 1:
                raise ValueError(
                    f"matrix has {rows} rows (ratio {rows / area:.4f}); expected about ratio*{area} = "
                    f"{ratio * area:.2f} rows for ratio {ratio}"
                )
            weight = matrix
        else:
            rows = num_measurements(ratio, block_size) if num_rows is None else num_rows
            if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= area:
                raise ValueError(f"num_rows must be an integer in [1, {area}], got {rows!r}")
            weight = torch.randn(rows, area) / block_size
        self.ratio = float(ratio)
        self.block_size = block_size
        self.channels = channels
        self.num_rows = rows
        self.learnable = matrix is None if learnable is None else bool(learnable)
        if self.learnable:
            self.Phi = nn.Parameter(weight)
        else:
            self.register_buffer("Phi", weight)

    def extra_repr(self) -> str:
        return (
            f"ratio={self.ratio}, block_size={self.block_size}, channels={self.channels}, "
            f"num_rows={self.num_rows}, learnable={self.learnable}"
        )

    @property
    def grid_factor(self) -> int:
        """One measurement cell per ``b x b`` block: blocks are measured independently (exactly tileable)."""
        return self.block_size

    def _weight(self, like: Tensor) -> Tensor:
        b = self.block_size
        return self.Phi.to(dtype=like.dtype).view(self.num_rows, 1, b, b)

    def _check_image(self, x: Tensor) -> None:
        check_float_tensor(x, "image")
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"image has shape {tuple(x.shape)}, expected (B, {self.channels}, H, W) "
                f"({self.channels} channel{'s' if self.channels > 1 else ''})"
            )
        check_image_tensor(x)

    def _check_grid(self, x: Tensor) -> None:
        """Iterates live on the padded grid (what ``init``/``A_adjoint`` return)."""
        self._check_image(x)
        b = self.block_size
        if x.shape[-2] % b or x.shape[-1] % b:
            raise ValueError(
                f"iterate has spatial size {tuple(x.shape[-2:])}, expected multiples of block_size={b}: "
                "run the loop on the padded grid that init()/A_adjoint() return (see pad())"
            )

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size after zero-padding to multiples of ``b``."""
        b = self.block_size
        return -(-height // b) * b, -(-width // b) * b

    def pad(self, x: Tensor) -> Tensor:
        """Zero-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``b`` (no copy when aligned)."""
        height, width = self.padded_size(*x.shape[-2:])
        if (height, width) == tuple(x.shape[-2:]):
            return x
        return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))

    def A(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C*n, ceil(H/b), ceil(W/b))`` (zero-padding unaligned sides)."""
        self._check_image(x)
        x = self.pad(x)
        batch, channels, height, width = x.shape
        y = F.conv2d(x.reshape(batch * channels, 1, height, width), self._weight(x), stride=self.block_size)
        return y.reshape(batch, channels * self.num_rows, *y.shape[-2:])

    def A_adjoint(self, y: Tensor) -> Tensor:
        """``(B, C*n, h, w)`` -> ``(B, C, h*b, w*b)``: the padded grid; crop with ``x[..., :H, :W]``."""
        self.check_measurement(y)
        batch, _, h, w = y.shape
        x = F.conv_transpose2d(
            y.reshape(batch * self.channels, self.num_rows, h, w), self._weight(y), stride=self.block_size
        )
        return x.reshape(batch, self.channels, *x.shape[-2:])

    def gradient_step(self, x: Tensor, y: Tensor, rho: Scalar) -> Tensor:
        self._check_grid(x)
        return super().gradient_step(x, y, rho)

    def hqs_step(self, z: Tensor, y: Tensor, mu: Scalar) -> Tensor:
        """Per block ``(Phi^T Phi + mu I)^-1 (Phi^T y + mu z) = z + Phi^T (Phi Phi^T + mu I)^-1 (y - Phi z)``.

        The push-through (Woodbury) identity turns the ``b^2 x b^2`` system into one ``n x n`` solve
        shared by all blocks (one per batch item when ``mu`` is a ``(B,)`` tensor), and the residual
        form avoids dividing by ``mu``.
        """
        check_step_size("mu", mu, like=z)
        self._check_grid(z)
        residual = -self.residual(z, y)
        batch, _, h, w = residual.shape
        n, channels = self.num_rows, self.channels
        solve_dtype = torch.promote_types(residual.dtype, torch.float32)
        rhs = residual.reshape(batch, channels, n, h * w).transpose(1, 2).reshape(batch, n, channels * h * w)
        phi = self.Phi.to(solve_dtype)
        eye = torch.eye(n, dtype=solve_dtype, device=phi.device)
        mu_t = torch.as_tensor(mu, dtype=solve_dtype, device=phi.device)
        if mu_t.ndim == 1:
            mu_t = mu_t.view(-1, 1, 1)
        try:
            solution = torch.linalg.solve(phi @ phi.T + mu_t * eye, rhs.to(solve_dtype)).to(residual.dtype)
        except torch.linalg.LinAlgError as exc:
            rank = int(torch.linalg.matrix_rank(phi.detach()))
            raise ValueError(
                f"HQS step: Phi Phi^T + mu I is numerically singular at mu={_describe_step(mu)} "
                f"(Phi has rank {rank} of {n} rows); expected a larger mu, or a Phi of full row rank"
            ) from exc
        solution = (
            solution.reshape(batch, n, channels, h * w).transpose(1, 2).reshape(batch, channels * n, h, w)
        )
        return z + self.A_adjoint(solution)

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B, C*n, h, w)`` -> ``(B, C, h*b, w*b)`` (the padded grid)."""
        if len(measurement_shape) != 4:
            raise ValueError(f"measurement shape {tuple(measurement_shape)}, expected (B, C*n, h, w)")
        b = self.block_size
        batch, _, h, w = measurement_shape
        return (batch, self.channels, h * b, w * b)

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B, C, H, W)`` -> ``(B, C*n, ceil(H/b), ceil(W/b))``."""
        if len(image_shape) != 4:
            raise ValueError(f"image shape {tuple(image_shape)}, expected (B, C, H, W)")
        b = self.block_size
        batch, channels, height, width = image_shape
        return (batch, channels * self.num_rows, -(-height // b), -(-width // b))

    def check_measurement(self, y: Tensor) -> None:
        check_float_tensor(y, "measurement")
        expected = self.channels * self.num_rows
        if y.ndim != 4 or y.shape[1] != expected:
            raise ValueError(
                f"measurement has shape {tuple(y.shape)}, expected (B, {expected}, h, w) "
                f"({self.channels} channel(s) x {self.num_rows} rows of Phi per "
                f"{self.block_size}x{self.block_size} block)"
            )
        check_image_tensor(y, "measurement", f"(B, {expected}, h, w)")

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.physics_type,
            "ratio": self.ratio,
            "block_size": self.block_size,
            "channels": self.channels,
            "learnable": self.learnable,
            "num_rows": self.num_rows,
        }


def load_ista_net_matrix(
    path: str | PathLike[str], ratio: float | None = None, learnable: bool = False, channels: int = 1
) -> BlockCS:
    """ISTA-Net's fixed sampling matrix ``phi_0_{R}_1089.mat`` (variable ``phi``) as a :class:`BlockCS`.

    The block size follows from the column count (1089 -> 33). Without ``ratio`` the file name
    gives it (``phi_0_25_1089.mat`` -> 0.25).
    """
    path = Path(path)
    phi = load_mat_array(path, default="phi", ndim=2)
    block_size = math.isqrt(phi.shape[1])
    if block_size * block_size != phi.shape[1]:
        raise ValueError(f"{path}: phi has {phi.shape[1]} columns, expected a square number (b*b, e.g. 1089)")
    if ratio is None:
        match = re.fullmatch(r"phi_0_(\d+)_(\d+)\.mat", path.name)
        if match is None:
            raise ValueError(
                f"cannot read the CS ratio from {path.name!r} (expected phi_0_{{R}}_1089.mat); pass ratio="
            )
        ratio = int(match.group(1)) / 100
    return BlockCS(ratio, block_size=block_size, channels=channels, learnable=learnable, matrix=phi)


def derive_sampling_matrix(phi: Tensor, num_rows: int, generator: torch.Generator | None = None) -> Tensor:
    """An ``(num_rows, b*b)`` matrix that keeps as much of the learned ``phi`` as its row count allows.

    Phase 2 of the CS task learns a new ``Phi`` per ratio on a backbone trained with another one;
    starting it from the backbone's keeps the initial estimates ``Phi^T y`` in the distribution the
    denoiser was trained on, instead of a random Phi's. With ``phi = U S V^T``: fewer rows take the
    ``num_rows`` strongest directions ``S_i v_i^T`` (the best rank-``num_rows`` sampling of the same
    signal energy); more rows keep all of them and add random rows orthogonal to their span, scaled
    to the median singular value, so the new rows measure what ``phi`` did not.
    """
    if phi.ndim != 2:
        raise ValueError(f"phi must be a 2-D (n, b*b) matrix, got shape {tuple(phi.shape)}")
    rows, area = phi.shape
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or not 1 <= num_rows <= area:
        raise ValueError(f"num_rows must be an integer in [1, {area}], got {num_rows!r}")
    source = phi.detach().to(torch.float64)
    _, singular, vh = torch.linalg.svd(source, full_matrices=False)
    if num_rows <= rows:
        return (singular[:num_rows, None] * vh[:num_rows]).to(phi.dtype)
    extra = torch.randn(num_rows - rows, area, generator=generator, dtype=torch.float64)
    extra = extra - (extra @ vh.T) @ vh  # orthogonal to the rows of phi
    basis = torch.linalg.qr(extra.T).Q.T  # orthonormal new directions
    return torch.cat([source, singular.median() * basis]).to(phi.dtype)

"""GAP-TV, the classical SD-CASSI baseline (Yuan, ICIP 2016): no training, a total-variation prior.

Every iteration is a generalized-alternating-projection step onto the measurement (exact and cheap,
because ``Phi Phi^T = diag(Phi_s)`` is diagonal) followed by a total-variation denoising of each band
(Chambolle's dual projection, warm-started). The measurement update is the accelerated one of the
paper: the residual is accumulated, which works like an augmented Lagrangian. It sets the floor a learned
CASSI model has to clear on a given scene, and where that floor lies: textured scenes score low.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gap_tv", "tv_denoise"]


def _gradient(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences along W and H, zero on the last column / row."""
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return gx, gy


def _divergence(px: Tensor, py: Tensor) -> Tensor:
    """The negative adjoint of :func:`_gradient`."""
    div = torch.zeros_like(px)
    div[..., :, 0] = px[..., :, 0]
    div[..., :, 1:-1] = px[..., :, 1:-1] - px[..., :, :-2]
    div[..., :, -1] = -px[..., :, -2]
    div[..., 0, :] += py[..., 0, :]
    div[..., 1:-1, :] += py[..., 1:-1, :] - py[..., :-2, :]
    div[..., -1, :] -= py[..., -2, :]
    return div


def tv_denoise(
    image: Tensor,
    weight: float,
    iterations: int = 10,
    dual: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``argmin_x 1/2 ||x - image||^2 + weight * TV(x)``, isotropic TV of each 2-D slice ``(..., H, W)``.

    Chambolle's (2004) projection algorithm with step 1/4; ``dual`` warm-starts it (GAP-TV passes the
    previous iteration's). Returns the denoised image and the dual variable.
    """
    if weight <= 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    if image.ndim < 2 or min(image.shape[-2:]) < 2:
        raise ValueError(f"image must be (..., H, W) with H, W >= 2, got {tuple(image.shape)}")
    px, py = dual if dual is not None else (torch.zeros_like(image), torch.zeros_like(image))
    scaled = image / weight
    for _ in range(iterations):
        gx, gy = _gradient(_divergence(px, py) - scaled)
        norm = 1.0 + 0.25 * torch.sqrt(gx.square() + gy.square())
        px, py = (px + 0.25 * gx) / norm, (py + 0.25 * gy) / norm
    return image - weight * _divergence(px, py), (px, py)


@torch.no_grad()
def gap_tv(
    physics: torch.nn.Module,
    measurement: Tensor,
    iterations: int = 80,
    weight: float = 1.0,
    decay: float = 0.95,
    min_weight: float = 0.002,
    tv_iterations: int = 10,
    accelerate: bool = True,
    spectral_basis: Tensor | None = None,
) -> Tensor:
    """Restore a CASSI measurement ``(B, H, W + step*(C-1))`` to a cube ``(B, C, H, W)`` with GAP-TV.

    ``physics``: a :class:`~lorun_peft.physics.CASSI` operator (its mask and dispersion; the band count
    comes from the measurement width). The TV weight starts at ``weight`` (in units of the cube's
    [0, 1] range) and decays by ``decay`` per iteration down to ``min_weight``, the usual
    coarse-to-fine schedule. The defaults were chosen on two 256x256 crops of stuffed_toys (the CASSI
    training cube) with the TSA simulation mask, among starting weights 0.02 to 1.28 (docs/pretrained.md).
    ``accelerate=False`` projects onto the measurement itself instead of the accumulated one (plain GAP,
    the data step an HQS unfolding stage takes): slower to converge. ``spectral_basis`` ``(C, r)``, with
    orthonormal columns (e.g. :func:`~lorun_peft.data.spectral.principal_spectra` of training cubes),
    keeps every estimate in their span and applies TV to the ``r`` coefficient images instead of the
    ``C`` bands: a low-rank spectral prior (+1.7 dB on cloth with stuffed_toys' first 6 spectra,
    docs/tasks_cassi.md).
    """
    if iterations < 1 or tv_iterations < 1:
        raise ValueError(f"iterations and tv_iterations must be >= 1, got {iterations}, {tv_iterations}")
    if not 0 < decay <= 1 or weight <= 0 or min_weight <= 0:
        raise ValueError(
            f"need weight > 0, min_weight > 0 and 0 < decay <= 1, got {weight}, {min_weight}, {decay}"
        )
    bands = physics.bands(measurement)
    basis = None if spectral_basis is None else _check_basis(spectral_basis, bands).to(measurement.dtype)
    phi_s = physics.shifted_mask_energy(bands, measurement).clamp_min(1e-6)
    x = physics.init(measurement)
    accumulated = measurement.clone()
    dual = None
    for it in range(iterations):
        predicted = physics.A(x)
        if accelerate:
            accumulated = accumulated + (measurement - predicted)
        x = x + physics.A_adjoint((accumulated - predicted) / phi_s)
        strength = max(weight * decay**it, min_weight)
        if basis is None:
            x, dual = tv_denoise(x, strength, tv_iterations, dual)
        else:
            coefficients, dual = tv_denoise(
                torch.einsum("cr,bchw->brhw", basis, x), strength, tv_iterations, dual
            )
            x = torch.einsum("cr,brhw->bchw", basis, coefficients)
    return x.clamp(0.0, 1.0)


def _check_basis(basis: Tensor, bands: int) -> Tensor:
    """``basis`` must be a finite ``(bands, r)`` tensor, ``1 <= r <= bands``, with orthonormal columns."""
    if (
        not isinstance(basis, Tensor)
        or basis.ndim != 2
        or basis.shape[0] != bands
        or not 1 <= basis.shape[1] <= bands
    ):
        raise ValueError(
            f"spectral_basis must be a ({bands}, r) tensor with 1 <= r <= {bands} (one row per band of the "
            f"measurement), got {tuple(basis.shape) if isinstance(basis, Tensor) else type(basis).__name__}"
        )
    gram = basis.double().T @ basis.double()
    if not torch.isfinite(gram).all() or not torch.allclose(
        gram, torch.eye(gram.shape[0], dtype=gram.dtype), atol=1e-4
    ):
        raise ValueError("spectral_basis must have orthonormal columns (e.g. principal_spectra(cubes, rank))")
    return basis

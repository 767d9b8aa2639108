"""Making two hyperspectral cubes go further: band-wise brightness and RGB images lifted to spectra.

CASSI training data is scarce (two real CAVE cubes here). Two augmentations stretch it:

* :class:`BandGainAugment` multiplies each patch by a random smooth spectral gain (a random brightness
  per band, interpolated between a few control wavelengths) and a random overall brightness, so the
  denoiser cannot learn one scene's illuminant and spectra by heart.
* :class:`SpectralLift` maps RGB pixels to spectra with a linear map fitted by ridge regression on the
  training cubes (their pixels projected to RGB through three Gaussian camera responses), and
  :class:`LiftedRGBPatches` turns any RGB image folder (e.g. BSDS500) into cube patches with real spatial
  structure and spectra in the training cubes' span. :class:`MixedPatches` draws from two datasets at a
  given rate.

Every item depends only on ``(seed, epoch, index)`` like :class:`~lorun_peft.data.RandomPatchDataset`, so
training stays reproducible and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lorun_peft.data.transforms import patch_rng

__all__ = [
    "BandGainAugment",
    "LiftedRGBPatches",
    "MixedPatches",
    "SpectralLift",
    "principal_spectra",
    "rgb_response",
]

#: Peaks (nm) and width (std, nm) of the Gaussian camera responses used to project spectra to RGB.
RGB_PEAKS_NM = (610.0, 540.0, 465.0)
RGB_WIDTH_NM = 45.0


def _seed_of(dataset: Any) -> int:
    return int(getattr(dataset, "seed", 0))


def _set_epoch(dataset: Any, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def gaussian_responses(wavelengths: Sequence[float]) -> Tensor:
    """``(bands, 3)`` float64 values of the R, G, B Gaussians (peaks :data:`RGB_PEAKS_NM`) at each band."""
    lam = torch.tensor([float(v) for v in wavelengths], dtype=torch.float64)
    peaks = torch.tensor(RGB_PEAKS_NM, dtype=torch.float64)
    return torch.exp(-0.5 * ((lam[:, None] - peaks[None]) / RGB_WIDTH_NM) ** 2)


def rgb_response(wavelengths: Sequence[float]) -> Tensor:
    """``(bands, 3)`` camera response (R, G, B Gaussians), each column summing to 1 (white -> 1, 1, 1)."""
    if len(wavelengths) < 3:
        raise ValueError(f"need at least 3 band wavelengths to project to RGB, got {len(wavelengths)}")
    response = gaussian_responses(wavelengths)
    return response / response.sum(dim=0, keepdim=True)


def principal_spectra(cubes: Sequence[Tensor], rank: int) -> Tensor:
    """The first ``rank`` principal spectra of the pixels of ``cubes`` (``(bands, H, W)`` each).

    Returns ``(bands, rank)`` with orthonormal columns: the leading left singular vectors of the
    uncentred ``bands x pixels`` matrix (so the mean spectrum is in the span). Natural scenes are
    spectrally low-rank: cloth projected onto stuffed_toys' first 6 keeps 50.5 dB per-band PSNR.
    """
    if not cubes:
        raise ValueError("principal_spectra needs at least one cube")
    bands = {int(c.shape[0]) if isinstance(c, Tensor) and c.ndim == 3 else -1 for c in cubes}
    if len(bands) != 1 or -1 in bands:
        raise ValueError("principal_spectra needs (bands, H, W) cubes with one band count")
    count = bands.pop()
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= count:
        raise ValueError(f"rank must be an integer in [1, {count}] (the band count), got {rank!r}")
    pixels = torch.cat([c.reshape(count, -1).to(torch.float64) for c in cubes], dim=1)
    if not torch.isfinite(pixels).all():
        raise ValueError("principal_spectra: the cubes contain NaN or infinite values")
    basis = torch.linalg.svd(pixels, full_matrices=False)[0][:, :rank]
    return basis.to(torch.float32)


class SpectralLift:
    """A linear RGB -> spectrum map ``s = M rgb`` fitted on real cubes (ridge regression).

    Args:
        matrix: ``(bands, 3)`` map ``M``.
        wavelengths: the band centres of the spectra (for the record and for :meth:`fit`).
        fit_error: relative RMS error of the fit on its training pixels (``||S - M R^T S|| / ||S||``).
    """

    def __init__(self, matrix: Tensor, wavelengths: Sequence[float], fit_error: float | None = None) -> None:
        if not isinstance(matrix, Tensor) or matrix.ndim != 2 or matrix.shape[1] != 3:
            raise ValueError(f"matrix must be a (bands, 3) tensor, got {getattr(matrix, 'shape', matrix)}")
        if len(wavelengths) != matrix.shape[0]:
            raise ValueError(f"{len(wavelengths)} wavelengths for a map to {matrix.shape[0]} bands")
        if not torch.isfinite(matrix).all():
            raise ValueError("matrix has non-finite entries")
        self.matrix = matrix.to(torch.float32)
        self.wavelengths = tuple(float(v) for v in wavelengths)
        self.fit_error = fit_error

    @property
    def bands(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def fit(
        cls,
        cubes: Sequence[Tensor],
        wavelengths: Sequence[float],
        *,
        max_pixels: int = 200_000,
        ridge: float = 1e-4,
        seed: int = 0,
    ) -> SpectralLift:
        """Fit ``M`` on the pixels of ``cubes`` (``(bands, H, W)`` each, values in [0, 1]).

        Each pixel spectrum ``s`` is projected to ``rgb = R^T s`` (:func:`rgb_response`), then
        ``M = argmin ||S - M RGB||^2 + ridge ||M||^2`` over at most ``max_pixels`` pixels drawn at random.
        """
        if not cubes:
            raise ValueError("SpectralLift.fit needs at least one cube")
        bands = {int(c.shape[0]) for c in cubes}
        if len(bands) != 1 or bands.pop() != len(wavelengths):
            raise ValueError(
                f"cubes have band counts {sorted({int(c.shape[0]) for c in cubes})}; expected "
                f"{len(wavelengths)} (one per wavelength)"
            )
        spectra = torch.cat([c.reshape(c.shape[0], -1).to(torch.float64) for c in cubes], dim=1)
        if spectra.shape[1] > max_pixels:
            generator = torch.Generator().manual_seed(seed)
            spectra = spectra[:, torch.randperm(spectra.shape[1], generator=generator)[:max_pixels]]
        response = rgb_response(wavelengths)
        rgb = response.T @ spectra  # (3, N)
        gram = rgb @ rgb.T + ridge * spectra.shape[1] * torch.eye(3, dtype=torch.float64)
        matrix = torch.linalg.solve(gram, rgb @ spectra.T).T  # (bands, 3)
        error = float((spectra - matrix @ rgb).norm() / spectra.norm().clamp_min(1e-12))
        return cls(matrix, wavelengths, fit_error=error)

    def __call__(self, rgb: Tensor) -> Tensor:
        """RGB ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1] -> spectra ``(bands, H, W)`` in [0, 1]."""
        if rgb.ndim not in (3, 4) or rgb.shape[-3] != 3:
            raise ValueError(f"expected an RGB tensor (3, H, W) or (B, 3, H, W), got {tuple(rgb.shape)}")
        cube = torch.einsum("kc,...chw->...khw", self.matrix.to(rgb.dtype), rgb)
        return cube.clamp(0.0, 1.0)


class LiftedRGBPatches(Dataset):
    """RGB patches (any dataset of ``(3, P, P)`` tensors) lifted to ``(bands, P, P)`` cube patches.

    Photographs are much brighter than CAVE radiance (patch means 0.2-0.5 against 0.01-0.2), so an l2
    loss over a mix is dominated by the lifted patches. With ``brightness_reference`` (a dataset of cube
    patches, e.g. the training cubes'), each lifted patch is scaled so that its mean equals the mean of a
    random reference patch (drawn from ``(seed, epoch, index)``), never above a peak of 1.
    """

    def __init__(
        self, rgb_patches: Dataset, lift: SpectralLift, *, brightness_reference: Dataset | None = None
    ) -> None:
        if len(rgb_patches) == 0:
            raise ValueError("no RGB patches to lift")
        if brightness_reference is not None and len(brightness_reference) == 0:
            raise ValueError("brightness_reference has no patches")
        self.rgb_patches = rgb_patches
        self.lift = lift
        self.bands = lift.bands
        self.seed = _seed_of(rgb_patches)
        self.brightness_reference = brightness_reference
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rgb_patches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        _set_epoch(self.rgb_patches, epoch)
        if self.brightness_reference is not None:
            _set_epoch(self.brightness_reference, epoch)

    def __getitem__(self, index: int) -> Tensor:
        patch = self.rgb_patches[index]
        if patch.ndim != 3 or patch.shape[0] != 3:
            raise ValueError(f"LiftedRGBPatches needs RGB (3, H, W) patches, got {tuple(patch.shape)}")
        cube = self.lift(patch.to(torch.float32))
        if self.brightness_reference is not None:
            rng = patch_rng(self.seed + 15485863, self.epoch, index)
            reference = self.brightness_reference[int(rng.integers(len(self.brightness_reference)))]
            mean, peak = float(cube.mean()), float(cube.max())
            if mean > 0.0:
                cube = cube * min(float(reference.mean()) / mean, 1.0 / peak)
        return cube.contiguous()


class BandGainAugment(Dataset):
    """Multiply each cube patch by a random smooth per-band gain and a random overall brightness.

    The gain is ``b * g(lambda)``: ``g`` interpolates ``control_points`` values drawn uniformly in
    ``[1 - strength, 1 + strength]`` across the bands, ``b`` is drawn in ``[1 - strength, 1]``; the
    result is clipped to [0, 1]. ``strength = 0`` returns the patches unchanged.
    """

    def __init__(self, patches: Dataset, strength: float, *, control_points: int = 4, seed: int = 0) -> None:
        if not 0.0 <= float(strength) < 1.0:
            raise ValueError(f"band gain strength must be in [0, 1), got {strength!r}")
        if control_points < 2:
            raise ValueError(f"control_points must be >= 2, got {control_points}")
        self.patches = patches
        self.strength = float(strength)
        self.control_points = int(control_points)
        self.seed = int(seed)
        self.epoch = 0
        self.bands = getattr(patches, "bands", None)

    def __len__(self) -> int:
        return len(self.patches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        _set_epoch(self.patches, epoch)

    def gains(self, bands: int, rng: np.random.Generator) -> Tensor:
        """``(bands,)`` gains for one patch."""
        s = self.strength
        control = rng.uniform(1.0 - s, 1.0 + s, size=self.control_points)
        curve = np.interp(np.linspace(0.0, 1.0, bands), np.linspace(0.0, 1.0, self.control_points), control)
        return torch.from_numpy(curve * rng.uniform(1.0 - s, 1.0)).to(torch.float32)

    def __getitem__(self, index: int) -> Tensor:
        patch = self.patches[index]
        if self.strength == 0.0:
            return patch
        rng = patch_rng(self.seed + 7919, self.epoch, index)
        gains = self.gains(int(patch.shape[0]), rng).to(patch.dtype)
        return (patch * gains[:, None, None]).clamp(0.0, 1.0).contiguous()


class MixedPatches(Dataset):
    """Item ``i`` comes from ``second`` with probability ``fraction``, else from ``first``.

    Which dataset and which of its items are drawn from ``(seed, epoch, i)``; ``length`` items per epoch
    (default: the larger dataset's length).
    """

    def __init__(
        self, first: Dataset, second: Dataset, fraction: float, *, seed: int = 0, length: int | None = None
    ) -> None:
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        if len(first) == 0 or len(second) == 0:
            raise ValueError("MixedPatches needs two non-empty datasets")
        self.first, self.second = first, second
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.epoch = 0
        self.length = int(length) if length is not None else max(len(first), len(second))
        self.bands = getattr(first, "bands", None)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        _set_epoch(self.first, epoch)
        _set_epoch(self.second, epoch)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} patches")
        rng = patch_rng(self.seed + 104729, self.epoch, index)
        source = self.second if rng.random() < self.fraction else self.first
        return source[int(rng.integers(len(source)))]

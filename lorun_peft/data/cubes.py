"""Hyperspectral cubes for CASSI: loading, spectral resampling, tiles and training patches.

Cubes are read from ``.npz`` (the ``cube`` / ``wavelengths_nm`` / ``scale`` layout of
``shared/data/CASSI/cubes``) or MATLAB ``.mat`` v5 files (KAIST/CAVE style, rows x cols x bands)
and returned as float32 ``(C, H, W)`` tensors in [0, 1]. :func:`resample_bands` linearly
interpolates spectra to other band centres, e.g. the 31 CAVE bands (400-700 nm) to the 28
KAIST/TSA bands of the standard simulation. :class:`CubePatchDataset` serves random, augmented
patches for training. It only supplies clean cubes: the coded-aperture measurement is simulated
later by the CASSI physics operator, so any band count works with a matching mask.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import PatchSize, augment_patch, patch_rng, patch_shape, random_crop

__all__ = [
    "CAVE_WAVELENGTHS_31",
    "KAIST_WAVELENGTHS_28",
    "CUBE_EXTENSIONS",
    "load_cube",
    "read_cube_wavelengths",
    "resample_bands",
    "tiles",
    "CubePatchDataset",
]

#: CAVE multispectral database: 31 bands, 400 to 700 nm in 10 nm steps.
CAVE_WAVELENGTHS_31: tuple[float, ...] = tuple(400.0 + 10.0 * i for i in range(31))

#: Centres (nm) of the 28 KAIST/TSA-Net simulation bands (2-pixel dispersion steps), as listed in
#: the TSA-Net / MST / DAUHST visualisation code (``lam28``). They are not evenly spaced.
KAIST_WAVELENGTHS_28: tuple[float, ...] = (
    453.5, 457.5, 462.0, 466.0, 471.5, 476.5, 481.5, 487.0, 492.5, 498.0, 504.0, 510.0, 516.0, 522.5,
    529.5, 536.5, 544.0, 551.5, 558.5, 567.5, 575.5, 584.5, 594.5, 604.0, 614.5, 625.0, 636.5, 648.0,
)  # fmt: skip

#: File endings :func:`load_cube` reads.
CUBE_EXTENSIONS = (".npz", ".mat")


def _read_raw(path: Path, key: str | None) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """(H, W, C) array, the file's scale (or None) and its wavelengths (or None)."""
    if not path.is_file():
        raise FileNotFoundError(f"cube file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                contents = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read cube file {path}: {err}") from err
        name = key or "cube"
        if name not in contents:
            raise ValueError(f"cube file {path} has no array {name!r}; arrays: {sorted(contents)}")
        scale = float(contents["scale"]) if "scale" in contents else None
        wavelengths = contents.get("wavelengths_nm")
        return contents[name], scale, wavelengths
    if suffix == ".mat":
        try:
            contents = scipy.io.loadmat(str(path))
        except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
            raise ValueError(
                f"cannot read cube file {path}: MATLAB v7.3 (HDF5) files are not supported; "
                "re-save it with save(..., '-v7') or convert it to .npz"
            ) from err
        except Exception as err:  # scipy raises many types on damaged files; re-raise naming the file
            raise ValueError(f"cannot read cube file {path}: {type(err).__name__}: {err}") from err
        arrays = {name: value for name, value in contents.items() if not name.startswith("__")}
        if key is not None:
            if key not in arrays:
                raise ValueError(f"cube file {path} has no variable {key!r}; variables: {sorted(arrays)}")
            return arrays[key], None, None
        for name in sorted(arrays):
            value = arrays[name]
            if isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype.kind in "uif":
                return value, None, None
        raise ValueError(f"cube file {path} has no 3-D numeric variable; variables: {sorted(arrays)}")
    raise ValueError(f"unsupported cube file {path}; expected one of {', '.join(CUBE_EXTENSIONS)}")


def read_cube_wavelengths(path: str | os.PathLike) -> Tensor | None:
    """Band centres (nm) stored in a cube file (``wavelengths_nm`` in .npz), or ``None``."""
    wavelengths = _read_raw(Path(path), None)[2]
    return None if wavelengths is None else torch.as_tensor(wavelengths, dtype=torch.float64)


def load_cube(
    path: str | os.PathLike,
    key: str | None = None,
    *,
    scale: float | None = None,
    expected_bands: int | None = None,
    src_wavelengths: Sequence[float] | Tensor | None = None,
    wavelengths: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Read a hyperspectral cube stored as rows x cols x bands; return float32 ``(C, H, W)`` in [0, 1].

    Values are divided by ``scale``, by default: the file's ``scale`` entry (.npz), else the
    integer type's maximum (65535 for uint16 CAVE counts), else 1 for float data (which must then
    lie in [0, 1]).

    Args:
        path: a ``.npz`` (array ``cube``, optional ``wavelengths_nm`` and ``scale``) or ``.mat``
            v5 file (the first 3-D variable by name, or ``key``).
        key: the array / variable to read.
        scale: divide the stored values by this.
        expected_bands: the band count the file must have (checked before any resampling).
        src_wavelengths: band centres of the file, when it does not store them (.mat).
        wavelengths: resample to these band centres (nm) with :func:`resample_bands`, e.g.
            :data:`KAIST_WAVELENGTHS_28`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, no 3-D array, wrong band count, values outside [0, 1] after
            scaling, or wavelengths needed but unknown. Messages name the file.
    """
    path = Path(path)
    raw, file_scale, file_wavelengths = _read_raw(path, key)
    if raw.ndim != 3 or raw.dtype.kind not in "uif":
        raise ValueError(
            f"cube {key or ''} in {path} must be a 3-D numeric array (H, W, C), got {raw.dtype} {raw.shape}"
        )
    bands = raw.shape[-1]
    if expected_bands is not None and bands != expected_bands:
        raise ValueError(
            f"cube file {path} has {bands} bands (shape H x W x C = {raw.shape}); expected {expected_bands}"
        )
    if scale is None:
        if file_scale is not None:
            scale = file_scale
        elif raw.dtype.kind in "ui":
            scale = float(np.iinfo(raw.dtype).max)
        else:
            scale = 1.0
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale} for {path}")
    cube = np.ascontiguousarray(raw.transpose(2, 0, 1), dtype=np.float64) / scale
    if not np.isfinite(cube).all():
        raise ValueError(f"cube file {path} contains NaN or infinite values")
    low, high = float(cube.min()), float(cube.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"cube file {path} has values in [{low:.4g}, {high:.4g}] after dividing by {scale:g}; "
            "expected [0, 1]: pass scale= (e.g. 65535 for 16-bit counts)"
        )
    tensor = torch.from_numpy(cube)
    if wavelengths is not None:
        source = src_wavelengths if src_wavelengths is not None else file_wavelengths
        if source is None:
            raise ValueError(f"cube file {path} stores no wavelengths; pass src_wavelengths= to resample it")
        try:
            tensor = resample_bands(tensor, source, wavelengths)
        except ValueError as err:
            raise ValueError(f"cannot resample cube file {path}: {err}") from err
    return tensor.to(torch.float32)


def resample_bands(
    cube: Tensor,
    src_wavelengths: Sequence[float] | Tensor | np.ndarray,
    dst_wavelengths: Sequence[float] | Tensor | np.ndarray,
) -> Tensor:
    """Linear spectral interpolation of ``(..., C_src, H, W)`` to ``(..., C_dst, H, W)``.

    Each output band ``lambda`` mixes the two source bands around it:
    ``x(lambda) = (1 - t) x_i + t x_{i+1}``, ``t = (lambda - lambda_i) / (lambda_{i+1} - lambda_i)``.
    No extrapolation: every destination wavelength must lie within the source range.
    """
    src = torch.as_tensor(np.asarray(src_wavelengths, dtype=np.float64))
    dst = torch.as_tensor(np.asarray(dst_wavelengths, dtype=np.float64))
    if src.ndim != 1 or dst.ndim != 1 or dst.numel() == 0:
        raise ValueError("src_wavelengths and dst_wavelengths must be non-empty 1-D sequences")
    if cube.ndim < 3 or cube.shape[-3] != src.numel():
        raise ValueError(
            f"cube of shape {tuple(cube.shape)} needs {src.numel()} bands (one per src wavelength) at dim -3"
        )
    if src.numel() < 2 or not bool((src[1:] > src[:-1]).all()):
        raise ValueError("src_wavelengths must hold at least two strictly increasing values")
    low, high = float(src[0]), float(src[-1])
    if float(dst.min()) < low - 1e-9 or float(dst.max()) > high + 1e-9:
        raise ValueError(
            f"dst_wavelengths span [{float(dst.min())}, {float(dst.max())}] nm, outside the source range "
            f"[{low}, {high}] nm; extrapolation is not supported"
        )
    right = torch.searchsorted(src, dst, right=True).clamp(1, src.numel() - 1)
    left = right - 1
    t = ((dst - src[left]) / (src[right] - src[left])).clamp(0.0, 1.0)
    weights = torch.zeros(dst.numel(), src.numel(), dtype=torch.float64)
    rows = torch.arange(dst.numel())
    weights[rows, left] += 1.0 - t
    weights[rows, right] += t
    weights = weights.to(dtype=cube.dtype if cube.is_floating_point() else torch.float32, device=cube.device)
    return torch.einsum("dc,...chw->...dhw", weights, cube.to(weights.dtype))


def tiles(cube: Tensor, size: int) -> Tensor:
    """Non-overlapping ``size x size`` tiles of ``(C, H, W)``, row-major, as ``(N, C, size, size)``.

    Rows/columns beyond the last whole tile are dropped. A 512 x 512 CAVE frame gives four
    256 x 256 KAIST-sized tiles, e.g. for a train/test split by tiles.
    """
    if cube.ndim != 3:
        raise ValueError(f"expected a (C, H, W) cube, got shape {tuple(cube.shape)}")
    channels, height, width = cube.shape
    if size < 1 or size > height or size > width:
        raise ValueError(f"tile size {size} does not fit a {height}x{width} cube")
    rows, cols = height // size, width // size
    cropped = cube[:, : rows * size, : cols * size]
    out = cropped.reshape(channels, rows, size, cols, size).permute(1, 3, 0, 2, 4)
    return out.reshape(rows * cols, channels, size, size).contiguous()


def _cube_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CUBE_EXTENSIONS)
            if not files:
                raise FileNotFoundError(
                    f"no cube files in {folder}; expected files ending in {CUBE_EXTENSIONS}"
                )
            return files
        return [folder]
    return [Path(p) for p in source]


class CubePatchDataset(Dataset):
    """Random ``patch_size`` crops of hyperspectral cubes with random flips / 90-degree turns.

    Cubes are loaded once (with :func:`load_cube`, optionally resampled to ``wavelengths``) and
    kept in memory; item ``i`` is a float32 ``(C, h, w)`` patch (``h = w = patch_size`` or
    ``patch_size = (h, w)``, e.g. a full-width CASSI strip) of cube
    ``i // patches_per_cube``, determined by ``(seed, epoch, i)`` only (see :meth:`set_epoch`).

    Args:
        cubes: a folder of ``.npz``/``.mat`` files, a list of such files, or a list of
            ``(C, H, W)`` tensors in [0, 1] (e.g. from :func:`tiles`).
        patch_size: side of the square patches (256 for the KAIST protocol), or ``(height, width)``.
        wavelengths: resample every cube to these band centres (e.g. :data:`KAIST_WAVELENGTHS_28`);
            ``None`` keeps the stored bands.
        src_wavelengths: band centres of the inputs when the files (or tensors) do not store them.
        augment: apply one of the 8 flips/rotations, chosen uniformly.
        seed: base seed.
        patches_per_cube: patches per cube per epoch.
        expected_bands: band count every file must have (before resampling).
        key: array / variable name inside the files.
    """

    def __init__(
        self,
        cubes: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Tensor],
        patch_size: PatchSize,
        wavelengths: Sequence[float] | Tensor | None = None,
        *,
        src_wavelengths: Sequence[float] | Tensor | None = None,
        augment: bool = True,
        seed: int = 0,
        patches_per_cube: int = 1,
        expected_bands: int | None = None,
        key: str | None = None,
    ) -> None:
        if patches_per_cube < 1:
            raise ValueError(f"patches_per_cube must be positive, got {patches_per_cube}")
        height, width = patch_shape(patch_size)
        self.patch_size: PatchSize = height if height == width else (height, width)
        self.patches_per_cube = int(patches_per_cube)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.cubes: list[Tensor] = []
        self.names: list[str] = []
        if not isinstance(cubes, (str, os.PathLike)) and len(cubes) > 0 and isinstance(cubes[0], Tensor):
            for index, cube in enumerate(cubes):
                name = f"cube {index}"
                if not isinstance(cube, Tensor) or cube.ndim != 3:
                    raise ValueError(f"{name} must be a (C, H, W) tensor, got {type(cube)}")
                if expected_bands is not None and cube.shape[0] != expected_bands:
                    raise ValueError(f"{name} has {cube.shape[0]} bands; expected {expected_bands}")
                if wavelengths is not None:
                    if src_wavelengths is None:
                        raise ValueError("pass src_wavelengths= to resample tensors to wavelengths=")
                    cube = resample_bands(cube, src_wavelengths, wavelengths)
                self.cubes.append(cube.to(torch.float32))
                self.names.append(name)
        else:
            for path in _cube_files(cubes):
                self.cubes.append(
                    load_cube(
                        path,
                        key,
                        expected_bands=expected_bands,
                        src_wavelengths=src_wavelengths,
                        wavelengths=wavelengths,
                    )
                )
                self.names.append(f"cube file {path}")
        if not self.cubes:
            raise ValueError("no cubes given; expected at least one")
        band_counts = {int(c.shape[0]) for c in self.cubes}
        if len(band_counts) != 1:
            raise ValueError(
                f"cubes have different band counts {sorted(band_counts)}; pass wavelengths= to align them"
            )
        crop_height, crop_width = patch_shape(self.patch_size)
        shown = str(crop_height) if crop_height == crop_width else f"{crop_height}x{crop_width}"
        for cube, name in zip(self.cubes, self.names):
            height, width = cube.shape[-2:]
            if crop_height > height or crop_width > width:
                raise ValueError(f"patch size {shown} is larger than {name} ({height}x{width})")
        self.bands = band_counts.pop()

    def __len__(self) -> int:
        return len(self.cubes) * self.patches_per_cube

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of patches (deterministic per ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        cube_index = index // self.patches_per_cube
        rng = patch_rng(self.seed, self.epoch, index)
        patch = random_crop(self.cubes[cube_index], self.patch_size, rng, name=self.names[cube_index])
        if self.augment:
            patch = augment_patch(patch, rng)
        return patch.contiguous()

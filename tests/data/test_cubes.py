"""Hyperspectral cube loading, spectral resampling, tiles and patch datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from lorun_peft.data import (
    CAVE_WAVELENGTHS_31,
    KAIST_WAVELENGTHS_28,
    CubePatchDataset,
    load_cube,
    read_cube_wavelengths,
    resample_bands,
    tiles,
)
from lorun_peft.data.samples import load_sample_image


def _shared_data() -> Path:
    env = os.environ.get("LORUN_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _counts(height: int, width: int, bands: int = 31, seed: int = 0) -> np.ndarray:
    """uint16 H x W x C cube with real spatial content (sample photos) and smooth spectra."""
    rng = np.random.default_rng(seed)
    base = load_sample_image("camera")[0, :height, :width].numpy()
    spectra = np.linspace(0.3, 1.0, bands)[None, None, :] * rng.uniform(0.5, 1.0, (1, 1, bands))
    return np.round(base[:, :, None] * spectra * 60000).astype(np.uint16)


def _write_npz(path: Path, cube: np.ndarray, wavelengths=CAVE_WAVELENGTHS_31) -> Path:
    np.savez_compressed(path, cube=cube, wavelengths_nm=np.asarray(wavelengths, np.float32), scale=65535)
    return path


def test_kaist_wavelengths() -> None:
    lam = np.asarray(KAIST_WAVELENGTHS_28)
    assert lam.shape == (28,) and lam[0] == 453.5 and lam[-1] == 648.0
    assert (np.diff(lam) > 0).all()
    assert {476.5, 481.5, 487.0, 492.5, 498.0, 522.5, 567.5, 584.5} <= set(lam.tolist())
    assert CAVE_WAVELENGTHS_31[0] == 400 and CAVE_WAVELENGTHS_31[-1] == 700 and len(CAVE_WAVELENGTHS_31) == 31
    assert CAVE_WAVELENGTHS_31[0] <= lam.min() and lam.max() <= CAVE_WAVELENGTHS_31[-1]


def test_load_npz_cube(tmp_path: Path) -> None:
    counts = _counts(24, 20)
    path = _write_npz(tmp_path / "scene.npz", counts)
    cube = load_cube(path)
    assert cube.shape == (31, 24, 20) and cube.dtype == torch.float32
    assert torch.allclose(cube, torch.from_numpy(counts.transpose(2, 0, 1) / 65535).float())
    assert torch.equal(read_cube_wavelengths(path), torch.tensor(CAVE_WAVELENGTHS_31, dtype=torch.float64))
    assert torch.allclose(load_cube(path, scale=2 * 65535), cube / 2)


def test_load_mat_cube_picks_the_3d_variable(tmp_path: Path) -> None:
    img = _counts(16, 18, bands=28).astype(np.float64) / 65535
    path = tmp_path / "scene01.mat"
    scipy.io.savemat(path, {"a_mask": np.ones((16, 18)), "img": img, "other": img[..., :5] * 0.5})
    cube = load_cube(path)  # first 3-D variable by name: "img"
    assert cube.shape == (28, 16, 18)
    assert torch.allclose(cube, torch.from_numpy(img.transpose(2, 0, 1)).float())
    assert load_cube(path, key="other").shape == (5, 16, 18)
    scipy.io.savemat(tmp_path / "counts.mat", {"img_expand": _counts(8, 8, bands=28)})
    assert float(load_cube(tmp_path / "counts.mat").max()) <= 1.0  # uint16 scaled by 65535


def test_load_cube_errors_name_the_file(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "cave_scene.npz", _counts(8, 8))
    with pytest.raises(ValueError, match=r"cave_scene\.npz has 31 bands .*expected 28"):
        load_cube(path, expected_bands=28)
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_cube(tmp_path / "nothing.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"cannot read cube file .*broken\.npz"):
        load_cube(broken)
    (tmp_path / "damaged.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match=r"cannot read cube file .*damaged\.mat"):
        load_cube(tmp_path / "damaged.mat")
    scipy.io.savemat(tmp_path / "flat.mat", {"mask": np.ones((8, 8))})
    with pytest.raises(ValueError, match=r"flat\.mat has no 3-D numeric variable"):
        load_cube(tmp_path / "flat.mat")
    scipy.io.savemat(tmp_path / "raw.mat", {"img": np.full((4, 4, 3), 4000.0)})
    with pytest.raises(ValueError, match=r"raw\.mat has values in .*pass scale="):
        load_cube(tmp_path / "raw.mat")
    with pytest.raises(ValueError, match=r"raw\.mat stores no wavelengths"):
        load_cube(tmp_path / "raw.mat", scale=4000, wavelengths=KAIST_WAVELENGTHS_28)
    with pytest.raises(ValueError, match="unsupported cube file"):
        (tmp_path / "cube.h5").write_bytes(b"")
        load_cube(tmp_path / "cube.h5")


def test_resample_bands_is_exact_for_linear_spectra() -> None:
    src = torch.tensor(CAVE_WAVELENGTHS_31, dtype=torch.float64)
    a = torch.rand(1, 5, 6, dtype=torch.float64)
    b = torch.rand(1, 5, 6, dtype=torch.float64) / 1000
    cube = a + b * src.view(-1, 1, 1)  # each pixel's spectrum is a line in wavelength
    out = resample_bands(cube, CAVE_WAVELENGTHS_31, KAIST_WAVELENGTHS_28)
    dst = torch.tensor(KAIST_WAVELENGTHS_28, dtype=torch.float64)
    assert out.shape == (28, 5, 6)
    assert torch.allclose(out, a + b * dst.view(-1, 1, 1), atol=1e-12)
    assert torch.allclose(resample_bands(cube, CAVE_WAVELENGTHS_31, CAVE_WAVELENGTHS_31), cube, atol=1e-12)
    batched = resample_bands(cube.unsqueeze(0).float(), src, dst)
    assert batched.shape == (1, 28, 5, 6) and batched.dtype == torch.float32
    # 504 nm lies 0.4 of the way from 500 to 510 nm
    two = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    assert torch.allclose(resample_bands(two, [500.0, 510.0], [504.0]), torch.full((1, 2, 2), 0.4))


def test_resample_bands_rejects_bad_wavelengths() -> None:
    cube = torch.rand(31, 4, 4)
    with pytest.raises(ValueError, match="extrapolation"):
        resample_bands(cube, CAVE_WAVELENGTHS_31, [390.0, 500.0])
    with pytest.raises(ValueError, match="needs 28 bands"):
        resample_bands(cube, KAIST_WAVELENGTHS_28, [500.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        resample_bands(torch.rand(3, 4, 4), [400.0, 420.0, 410.0], [405.0])


def test_load_cube_resamples_cave_to_kaist(tmp_path: Path) -> None:
    counts = _counts(12, 12)
    path = _write_npz(tmp_path / "scene.npz", counts)
    cube = load_cube(path, wavelengths=KAIST_WAVELENGTHS_28)
    assert cube.shape == (28, 12, 12)
    full = torch.from_numpy(counts.transpose(2, 0, 1) / 65535)
    band_510 = KAIST_WAVELENGTHS_28.index(510.0)  # a KAIST centre that is also a CAVE band
    assert torch.allclose(cube[band_510].double(), full[CAVE_WAVELENGTHS_31.index(510.0)], atol=1e-6)


def test_tiles() -> None:
    cube = torch.arange(2 * 5 * 7, dtype=torch.float32).view(2, 5, 7)
    out = tiles(cube, 2)
    assert out.shape == (6, 2, 2, 2)  # 2 rows x 3 cols of tiles; the rest is dropped
    assert torch.equal(out[0], cube[:, 0:2, 0:2])
    assert torch.equal(out[2], cube[:, 0:2, 4:6])
    assert torch.equal(out[4], cube[:, 2:4, 2:4])
    with pytest.raises(ValueError, match="does not fit"):
        tiles(cube, 6)


def test_cube_patch_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "cubes"
    folder.mkdir()
    _write_npz(folder / "a.npz", _counts(20, 24, seed=1))
    _write_npz(folder / "b.npz", _counts(18, 18, seed=2))
    (folder / "README.txt").write_text("ignored")
    data = CubePatchDataset(folder, 16, KAIST_WAVELENGTHS_28, patches_per_cube=3, seed=3)
    assert len(data) == 6 and data.bands == 28
    items = torch.stack([data[i] for i in range(len(data))])
    assert items.shape == (6, 28, 16, 16) and items.dtype == torch.float32
    again = CubePatchDataset(folder, 16, KAIST_WAVELENGTHS_28, patches_per_cube=3, seed=3)
    assert torch.equal(items, torch.stack([again[i] for i in range(len(again))]))
    data.set_epoch(1)
    assert not torch.equal(items, torch.stack([data[i] for i in range(len(data))]))
    plain = CubePatchDataset([folder / "b.npz"], 16, augment=False)
    full = load_cube(folder / "b.npz")
    windows = full.unfold(1, 16, 1).unfold(2, 16, 1)  # every 16x16 crop
    assert (windows == plain[0][:, None, None]).flatten(-2).all(-1).all(0).any()
    from_tiles = CubePatchDataset(list(tiles(full, 9)), 8, seed=0)
    assert len(from_tiles) == 4 and from_tiles[3].shape == (31, 8, 8)


def test_cube_patch_dataset_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cubes"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no cube files"):
        CubePatchDataset(folder, 8)
    _write_npz(folder / "big.npz", _counts(20, 20))
    _write_npz(folder / "small.npz", _counts(10, 12))
    with pytest.raises(ValueError, match=r"patch size 16 is larger than cube file .*small\.npz \(10x12\)"):
        CubePatchDataset(folder, 16)
    np.savez(folder / "c_bands.npz", cube=_counts(20, 20, bands=28))
    with pytest.raises(ValueError, match=r"c_bands\.npz has 28 bands .*expected 31"):
        CubePatchDataset(folder, 8, expected_bands=31)
    with pytest.raises(ValueError, match="different band counts"):
        CubePatchDataset(folder, 8)
    with pytest.raises(ValueError, match="src_wavelengths"):
        CubePatchDataset([torch.rand(31, 8, 8)], 4, KAIST_WAVELENGTHS_28)


def test_real_cave_cubes_resample_to_kaist() -> None:
    folder = _shared_data() / "CASSI" / "cubes"
    path = folder / "cloth.npz"
    if not path.is_file():
        pytest.skip(f"CAVE cubes not found at {folder} (set LORUN_DATA_DIR)")
    raw = np.load(path)
    cube = load_cube(path, wavelengths=KAIST_WAVELENGTHS_28, expected_bands=31)
    assert cube.shape == (28, 256, 256) and float(cube.min()) >= 0 and float(cube.max()) <= 1
    band_510 = torch.from_numpy(raw["cube"][:, :, CAVE_WAVELENGTHS_31.index(510.0)] / 65535).float()
    assert torch.allclose(cube[KAIST_WAVELENGTHS_28.index(510.0)], band_510, atol=1e-6)
    patches = CubePatchDataset(folder, 128, KAIST_WAVELENGTHS_28, expected_bands=31, seed=0)
    assert patches[0].shape == (28, 128, 128)

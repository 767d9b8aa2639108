"""lorun_peft.metrics against scikit-image and against hand-computed protocol cases, on real images."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lorun_peft import metrics
from lorun_peft.data.samples import load_sample_image

PSNR_TOL = 1e-6  # dB; the requirement is 1e-3, float64 on both sides allows far less
SSIM_TOL = 1e-7  # the requirement is 1e-4


def _shared_data() -> Path:
    env = os.environ.get("LORUN_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W, C) float64 array."""
    return x.double().permute(1, 2, 0).numpy()


def _noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, sigma, sigma), mode="reflect"))


def _skimage_ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Wang et al. Gaussian SSIM as scikit-image computes it; (H, W) or (H, W, C) arrays."""
    return structural_similarity(
        target,
        pred,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=None if pred.ndim == 2 else -1,
    )


@pytest.fixture(scope="module")
def camera_pair() -> tuple[torch.Tensor, torch.Tensor]:
    clean = load_sample_image("camera")
    return _noisy(clean, 0.08, seed=1), clean


@pytest.fixture(scope="module")
def astronaut_pair() -> tuple[torch.Tensor, torch.Tensor]:
    clean = load_sample_image("astronaut", "RGB")[:, :200, 150:400]
    return _blurred(clean, 1.2), clean


# --- rgb_to_y -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((1.0, 1.0, 1.0), 235.0),
        ((0.0, 0.0, 0.0), 16.0),
        ((1.0, 0.0, 0.0), 81.481),
        ((0.0, 1.0, 0.0), 144.553),
        ((0.0, 0.0, 1.0), 40.966),
    ],
)
def test_rgb_to_y_matlab_values(rgb: tuple[float, float, float], expected: float) -> None:
    img = torch.tensor(rgb).view(3, 1, 1).expand(3, 2, 2)
    y = metrics.rgb_to_y(img)
    assert y.shape == (1, 2, 2) and y.dtype == torch.float64
    assert torch.allclose(y, torch.full_like(y, expected), atol=1e-9)
    as_uint8 = metrics.rgb_to_y(np.full((2, 2, 3), 255, dtype=np.uint8) * np.array(rgb, dtype=np.uint8))
    assert np.allclose(as_uint8, expected, atol=1e-9)


def test_rgb_to_y_matches_skimage_on_a_photo(astronaut_pair) -> None:
    _, clean = astronaut_pair
    y = metrics.rgb_to_y(clean.unsqueeze(0))
    assert y.shape == (1, 1, *clean.shape[-2:])
    reference = rgb2ycbcr(_hwc(clean))[..., 0]
    assert np.allclose(y[0, 0].numpy(), reference, atol=1e-9)
    assert np.allclose(metrics.rgb_to_y(_hwc(clean)), reference, atol=1e-9)


def test_rgb_to_y_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        metrics.rgb_to_y(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        metrics.rgb_to_y(np.zeros((8, 8, 1)))


# --- PSNR / SSIM against scikit-image -----------------------------------------------------------


def test_psnr_matches_skimage_gray_and_rgb(camera_pair, astronaut_pair) -> None:
    for pred, target in (camera_pair, astronaut_pair):
        ours = metrics.psnr(pred, target, data_range=1.0)
        reference = peak_signal_noise_ratio(_hwc(target), _hwc(pred), data_range=1.0)
        assert ours.dtype == torch.float64 and ours.ndim == 0
        assert float(ours) == pytest.approx(reference, abs=PSNR_TOL)
        on_255 = metrics.psnr(pred * 255, target * 255, data_range=255.0)
        assert float(on_255) == pytest.approx(reference, abs=PSNR_TOL)


def test_ssim_matches_skimage_gaussian(camera_pair, astronaut_pair) -> None:
    for pred, target in (camera_pair, astronaut_pair):
        reference = _skimage_ssim(_hwc(pred) * 255, _hwc(target) * 255, 255.0)
        assert float(metrics.ssim(pred * 255, target * 255, data_range=255.0)) == pytest.approx(
            reference, abs=SSIM_TOL
        )
        assert float(metrics.ssim(pred, target)) == pytest.approx(reference, abs=1e-9)


def test_ssim_uniform_window_matches_skimage_defaults(camera_pair) -> None:
    pred, target = camera_pair
    reference = structural_similarity(_hwc(target)[..., 0] * 255, _hwc(pred)[..., 0] * 255, data_range=255)
    ours = metrics.ssim(pred * 255, target * 255, data_range=255.0, window="uniform")
    assert float(ours) == pytest.approx(reference, abs=SSIM_TOL)


def test_ssim_valid_region_equals_torchmetrics_interior(camera_pair) -> None:
    """torchmetrics reflect-pads and averages the whole map; its interior is the valid SSIM."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = camera_pair
    _, full_map = structural_similarity_index_measure(
        pred[None].double(), target[None].double(), sigma=1.5, data_range=1.0, return_full_image=True
    )
    assert float(metrics.ssim(pred, target)) == pytest.approx(
        float(full_map[..., 5:-5, 5:-5].mean()), abs=1e-9
    )


def test_batch_reduction_and_dtypes(camera_pair) -> None:
    clean = load_sample_image("brick")[:, :128, :128]
    targets = torch.stack([clean, clean.flip(-1), clean.flip(-2)])
    preds = torch.stack([_noisy(t, s, seed=i) for i, (t, s) in enumerate(zip(targets, (0.02, 0.05, 0.1)))])
    for fn in (metrics.psnr, metrics.ssim):
        per_image = fn(preds, targets, reduction="none")
        assert per_image.shape == (3,)
        singles = torch.stack([fn(p, t) for p, t in zip(preds, targets)])
        assert torch.allclose(per_image, singles, atol=1e-12)
        assert float(fn(preds, targets)) == pytest.approx(float(per_image.mean()), abs=1e-12)
        assert per_image[0] > per_image[1] > per_image[2]  # more noise, lower score
        from_float64 = fn(preds.double(), targets.double(), reduction="none")
        assert torch.allclose(per_image, from_float64, atol=1e-12)
    assert metrics.psnr(preds[0], targets[0], reduction="none").ndim == 0
    assert math.isinf(float(metrics.psnr(targets, targets)))
    assert float(metrics.ssim(targets, targets)) == pytest.approx(1.0, abs=1e-12)


def test_shave_removes_border_pixels() -> None:
    target = load_sample_image("gravel")[:, :64, :64]
    pred = target.clone()
    pred[:, :3, :] = 1.0 - pred[:, :3, :]  # damage only the 3 top rows
    assert math.isinf(float(metrics.psnr(pred, target, shave=3)))
    pred = _noisy(target, 0.05, seed=3)
    reference = peak_signal_noise_ratio(_hwc(target)[4:-4, 4:-4], _hwc(pred)[4:-4, 4:-4], data_range=1.0)
    assert float(metrics.psnr(pred, target, shave=4)) == pytest.approx(reference, abs=PSNR_TOL)
    reference = _skimage_ssim(_hwc(pred)[4:-4, 4:-4, 0], _hwc(target)[4:-4, 4:-4, 0], 1.0)
    assert float(metrics.ssim(pred, target, shave=4)) == pytest.approx(reference, abs=SSIM_TOL)


# --- task protocols -----------------------------------------------------------------------------


def test_sr_protocol_y_channel_with_shave(astronaut_pair) -> None:
    pred, target = astronaut_pair
    scale = 4
    y_pred = rgb2ycbcr(_hwc(pred))[scale:-scale, scale:-scale, 0]
    y_target = rgb2ycbcr(_hwc(target))[scale:-scale, scale:-scale, 0]
    psnr_ref = peak_signal_noise_ratio(y_target, y_pred, data_range=255)
    ssim_ref = _skimage_ssim(y_pred, y_target, 255.0)
    assert float(metrics.psnr_y(pred, target, shave=scale)) == pytest.approx(psnr_ref, abs=PSNR_TOL)
    assert float(metrics.ssim_y(pred, target, shave=scale)) == pytest.approx(ssim_ref, abs=SSIM_TOL)


def test_sr_protocol_quantized_like_uint8_images(astronaut_pair) -> None:
    pred, target = astronaut_pair
    pred = pred + 0.02  # some values leave [0, 1] and are clipped by quantisation

    def y_uint8(x: torch.Tensor) -> np.ndarray:
        """MATLAB rgb2ycbcr on uint8: exact rational Y, rounded half up."""
        rgb = np.round(np.clip(_hwc(x), 0, 1) * 255).astype(np.int64)
        numerator = rgb @ np.array([65481, 128553, 24966], dtype=np.int64)
        return 16.0 + (2 * numerator + 255000) // 510000

    psnr_ref = peak_signal_noise_ratio(y_uint8(target)[2:-2, 2:-2], y_uint8(pred)[2:-2, 2:-2], data_range=255)
    ours = metrics.psnr_y(pred, target, shave=2, quantize=True)
    assert float(ours) == pytest.approx(psnr_ref, abs=PSNR_TOL)
    assert abs(float(ours) - float(metrics.psnr_y(pred, target, shave=2))) > 1e-3  # rounding matters
    # KAIR rounds a float Y with numpy (ties to even, float noise): agrees except at rare exact ties.
    kair = [
        np.round(rgb2ycbcr(np.round(np.clip(_hwc(x), 0, 1) * 255).astype(np.uint8))[..., 0])
        for x in (target, pred)
    ]
    assert float(ours) == pytest.approx(
        peak_signal_noise_ratio(kair[0][2:-2, 2:-2], kair[1][2:-2, 2:-2], data_range=255), abs=1e-3
    )


def test_sr_protocol_gray_inputs_are_measured_directly(camera_pair) -> None:
    pred, target = camera_pair
    assert float(metrics.psnr_y(pred, target)) == pytest.approx(float(metrics.psnr(pred, target)), abs=1e-9)
    with pytest.raises(ValueError, match="C=2"):
        metrics.psnr_y(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))


def test_cs_protocol_clips_prediction_and_uses_skimage_defaults_for_ssim(camera_pair) -> None:
    pred, target = camera_pair
    pred = pred * 1.1 - 0.05  # leaves [0, 1]; the ISTA-Net protocol clips it
    clipped = np.clip(_hwc(pred)[..., 0], 0, 1) * 255
    reference = _hwc(target)[..., 0] * 255
    assert float(metrics.cs_psnr(pred, target)) == pytest.approx(
        peak_signal_noise_ratio(reference, clipped, data_range=255), abs=PSNR_TOL
    )
    assert float(metrics.cs_ssim(pred, target)) == pytest.approx(
        structural_similarity(clipped, reference, data_range=255), abs=SSIM_TOL
    )
    assert float(metrics.cs_ssim(pred, target, window="gaussian")) == pytest.approx(
        _skimage_ssim(clipped, reference, 255.0), abs=SSIM_TOL
    )
    with pytest.raises(ValueError, match="gray"):
        metrics.cs_psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8))


def test_cassi_psnr_mst_rounding_on_a_hand_computed_case() -> None:
    target = torch.full((2, 4, 4), 0.5)
    pred = target.clone()
    pred[0] += 1 / 256  # every pixel one step off on the x256 grid: MSE = 1
    pred[1, :2] += 2 / 256  # half the pixels two steps off: MSE = 2
    pred[1, 2:] += 0.3 / 256  # rounds back onto the target: no error under MST's rounding
    expected_mst = (10 * math.log10(255**2 / 1) + 10 * math.log10(255**2 / 2)) / 2
    assert float(metrics.cassi_psnr(pred, target)) == pytest.approx(expected_mst, abs=1e-9)
    mse_float = [(1 / 256) ** 2, ((2 / 256) ** 2 + (0.3 / 256) ** 2) / 2]
    expected_float = sum(10 * math.log10(1 / m) for m in mse_float) / 2
    assert float(metrics.cassi_psnr(pred, target, protocol="float")) == pytest.approx(
        expected_float, abs=1e-4
    )


def _mst_reference(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """MST's torch_psnr / torch_ssim written out in numpy for (C, H, W) cubes."""
    p, t = np.round(pred * 256), np.round(target * 256)
    psnr_value = np.mean([10 * np.log10(255**2 / np.mean((p[c] - t[c]) ** 2)) for c in range(len(p))])
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(a: np.ndarray) -> np.ndarray:
        return np.stack([ndimage.correlate(band, window, mode="constant", cval=0.0) for band in a])

    mu_p, mu_t = filt(pred), filt(target)
    var_p, var_t = filt(pred * pred) - mu_p**2, filt(target * target) - mu_t**2
    cov = filt(pred * target) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return float(psnr_value), float(ssim_map.mean())


def _real_cube() -> torch.Tensor:
    path = _shared_data() / "CASSI" / "cubes" / "cloth.npz"
    if path.is_file():
        return torch.from_numpy(np.load(path)["cube"][:96, :96, :8].astype(np.float64) / 65535).permute(
            2, 0, 1
        )
    # Offline fallback: real image content stacked as bands.
    bands = [load_sample_image(n)[0, :96, :96] for n in ("camera", "brick", "grass", "gravel")]
    return torch.stack(bands).double()


def test_cassi_metrics_match_mst_written_out() -> None:
    target = _real_cube()
    pred = _blurred(target, 0.8) + 0.01 * torch.randn(
        target.shape, generator=torch.Generator().manual_seed(0)
    )
    psnr_ref, ssim_ref = _mst_reference(pred.numpy(), target.numpy())
    assert float(metrics.cassi_psnr(pred, target)) == pytest.approx(psnr_ref, abs=PSNR_TOL)
    assert float(metrics.cassi_ssim(pred, target)) == pytest.approx(ssim_ref, abs=SSIM_TOL)
    per_band = [_skimage_ssim(pred[c].numpy(), target[c].numpy(), 1.0) for c in range(len(target))]
    valid = metrics.cassi_ssim(pred, target, protocol="valid")
    assert float(valid) == pytest.approx(float(np.mean(per_band)), abs=SSIM_TOL)
    per_band = [
        peak_signal_noise_ratio(target[c].numpy(), pred[c].numpy(), data_range=1) for c in range(len(target))
    ]
    assert float(metrics.cassi_psnr(pred, target, protocol="float")) == pytest.approx(
        np.mean(per_band), abs=PSNR_TOL
    )
    batch = metrics.cassi_psnr(torch.stack([pred, target]), torch.stack([target, target]), reduction="none")
    assert (
        batch.shape == (2,)
        and float(batch[0]) == pytest.approx(psnr_ref, abs=PSNR_TOL)
        and math.isinf(batch[1])
    )


# --- input validation ---------------------------------------------------------------------------


def test_invalid_inputs_raise_clear_errors() -> None:
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(x, torch.rand(1, 1, 32, 31))
    with pytest.raises(ValueError, match="data_range must be a positive number"):
        metrics.psnr(x, x, data_range=0)
    with pytest.raises(ValueError, match="data_range must be a positive number"):
        metrics.ssim(x, x, data_range=-1.0)
    with pytest.raises(ValueError, match="2\\*shave < min"):
        metrics.psnr(x, x, shave=16)
    with pytest.raises(ValueError, match="reduction"):
        metrics.psnr(x, x, reduction="sum")
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        metrics.psnr(torch.rand(32, 32), torch.rand(32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        metrics.psnr(np.zeros((1, 8, 8)), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="protocol"):
        metrics.cassi_psnr(x, x, protocol="tsa")


# --- standard test sets, when present -----------------------------------------------------------


def test_set11_gray_psnr_ssim_match_skimage() -> None:
    folder = _shared_data() / "Set11"
    files = sorted(folder.glob("*.tif"))
    if not files:
        pytest.skip(f"Set11 not found at {folder} (set LORUN_DATA_DIR)")
    for index, path in enumerate(files):
        with Image.open(path) as img:
            target = np.asarray(img.convert("L"), dtype=np.float64) / 255
        rng = np.random.default_rng(index)
        pred = target + rng.normal(0, 0.05, target.shape)  # unclipped, as a network output would be
        t, p = torch.from_numpy(target)[None], torch.from_numpy(pred)[None]
        assert float(metrics.psnr(p, t)) == pytest.approx(
            peak_signal_noise_ratio(target, pred, data_range=1), abs=PSNR_TOL
        )
        assert float(metrics.ssim(p * 255, t * 255, data_range=255)) == pytest.approx(
            _skimage_ssim(pred * 255, target * 255, 255.0), abs=SSIM_TOL
        )


def test_set5_y_channel_psnr_ssim_match_skimage() -> None:
    folder = _shared_data() / "Set5"
    files = sorted(folder.glob("*.bmp"))
    if not files:
        pytest.skip(f"Set5 not found at {folder} (set LORUN_DATA_DIR)")
    scale = 3
    for path in files:
        with Image.open(path) as img:
            target = np.asarray(img.convert("RGB"), dtype=np.float64) / 255
        h, w = (target.shape[0] // scale) * scale, (target.shape[1] // scale) * scale
        target = target[:h, :w]
        pred = ndimage.gaussian_filter(target, sigma=(1.0, 1.0, 0))
        y_t = rgb2ycbcr(target)[scale:-scale, scale:-scale, 0]
        y_p = rgb2ycbcr(pred)[scale:-scale, scale:-scale, 0]
        t, p = torch.from_numpy(target).permute(2, 0, 1), torch.from_numpy(pred).permute(2, 0, 1)
        assert float(metrics.psnr_y(p, t, shave=scale)) == pytest.approx(
            peak_signal_noise_ratio(y_t, y_p, data_range=255), abs=PSNR_TOL
        )
        assert float(metrics.ssim_y(p, t, shave=scale)) == pytest.approx(
            _skimage_ssim(y_p, y_t, 255.0), abs=SSIM_TOL
        )

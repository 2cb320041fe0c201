"""Tests for nulltext.evaluation.metrics: PSNR (whole image and masked), SSIM and latent MSE, with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from nulltext.evaluation.metrics import SSIM_K1, SSIM_K2, latent_mse, mse, psnr, ssim


# torchmetrics converts to dB with a float32 ln 10: PSNR agrees with the exact formula to ~4e-8 relative.
PSNR_REL = 1e-7


def random_rgb(seed: int, size: int = 32) -> np.ndarray:
    """A reproducible random 8-bit RGB array of size x size, kept away from 0 and 255."""
    return np.random.default_rng(seed).integers(20, 236, (size, size, 3), dtype=np.uint8)


def noisy(array: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``array`` plus gaussian noise of ``sigma`` grey levels, clipped to 8 bits."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, array.shape)
    return np.clip(array + noise, 0, 255).round().astype(np.uint8)


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Straight-loop SSIM of two (H, W, C) arrays in [0, 1]: 11x11 gaussian (1.5), valid windows."""
    coords = np.arange(11) - 5.0
    line = np.exp(-(coords**2) / (2 * 1.5**2))
    weights = np.outer(line, line) / np.outer(line, line).sum()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    values = []
    for channel in range(a.shape[2]):
        for top in range(a.shape[0] - 10):
            for left in range(a.shape[1] - 10):
                x = a[top : top + 11, left : left + 11, channel]
                y = b[top : top + 11, left : left + 11, channel]
                mx, my = (weights * x).sum(), (weights * y).sum()
                vx, vy = (weights * (x - mx) ** 2).sum(), (weights * (y - my) ** 2).sum()
                cov = (weights * (x - mx) * (y - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


# --- PSNR ---------------------------------------------------------------------------------------


def test_psnr_constant_offset_of_ten_levels() -> None:
    base = random_rgb(0)
    shifted = base + 10
    value = psnr(Image.fromarray(base), Image.fromarray(shifted))
    assert value == pytest.approx(20 * math.log10(255 / 10), abs=1e-6)


def test_psnr_is_symmetric_and_works_on_greyscale() -> None:
    a = Image.fromarray(np.full((16, 16), 100, dtype=np.uint8), mode="L")
    b = Image.fromarray(np.full((16, 16), 105, dtype=np.uint8), mode="L")
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 5), rel=PSNR_REL)
    assert psnr(b, a) == psnr(a, b)


def test_psnr_identical_is_infinite() -> None:
    image = Image.fromarray(random_rgb(1))
    assert psnr(image, image.copy()) == math.inf
    tensor = torch.rand(1, 3, 8, 8) * 2 - 1
    assert psnr(tensor, tensor.clone()) == math.inf


def test_psnr_tensor_in_minus_one_to_one_defaults_to_range_two() -> None:
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(4 / 0.04), rel=PSNR_REL)  # = 20 dB
    assert psnr(a, b, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.04), rel=PSNR_REL)


def test_psnr_tensor_outside_unit_range_needs_data_range() -> None:
    a, b = torch.zeros(3, 4, 4), torch.full((3, 4, 4), 10.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, b)
    assert psnr(a, b, data_range=255.0) == pytest.approx(20 * math.log10(255 / 10), abs=1e-6)


def test_psnr_numpy_arrays_match_pil() -> None:
    a, b = random_rgb(2), noisy(random_rgb(2), 8.0, 3)
    from_pil = psnr(Image.fromarray(a), Image.fromarray(b))
    from_numpy = psnr(a.astype(np.float64), b.astype(np.float64), data_range=255.0)
    assert from_numpy == pytest.approx(from_pil, abs=1e-9)


def test_psnr_mask_ignores_edited_region() -> None:
    base = np.full((16, 16, 3), 100, dtype=np.uint8)
    edited = base.copy()
    edited[:, :8] += 4  # background (left half) off by 4 levels
    edited[:, 8:] = 255  # foreground completely changed
    background = np.zeros((16, 16), dtype=bool)
    background[:, :8] = True
    value = psnr(Image.fromarray(base), Image.fromarray(edited), mask=background)
    assert value == pytest.approx(20 * math.log10(255 / 4), rel=PSNR_REL)
    whole = psnr(Image.fromarray(base), Image.fromarray(edited))
    assert whole < value - 10


def test_psnr_mask_on_batched_tensors() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[..., 0, :] = 0.5  # top row differs
    b[..., 1:, :] = 0.1
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:] = True
    assert psnr(a, b, mask=mask) == pytest.approx(10 * math.log10(4 / 0.01), rel=PSNR_REL)


def test_psnr_mask_errors() -> None:
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    with pytest.raises(ValueError, match="no pixels"):
        psnr(a, b, mask=np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="mask shape"):
        psnr(a, b, mask=np.ones((3, 3), dtype=bool))


def test_psnr_shape_and_type_mismatches() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9)))
    with pytest.raises(TypeError):
        psnr(Image.new("RGB", (8, 8)), torch.zeros(3, 8, 8))


# --- SSIM ---------------------------------------------------------------------------------------


def test_ssim_of_identical_images_is_one() -> None:
    image = Image.fromarray(random_rgb(4))
    assert ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-6)
    tensor = torch.rand(2, 3, 24, 24) * 2 - 1
    assert ssim(tensor, tensor.clone()) == pytest.approx(1.0, abs=1e-6)


def test_ssim_of_constant_images_matches_closed_form() -> None:
    a = Image.new("RGB", (16, 16), (51, 51, 51))  # 0.2
    b = Image.new("RGB", (16, 16), (153, 153, 153))  # 0.6
    c1 = SSIM_K1**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # no variance: luminance term only
    assert ssim(a, b) == pytest.approx(expected, abs=1e-9)


def test_ssim_matches_straight_loop_reference() -> None:
    a, b = random_rgb(5, 16), noisy(random_rgb(5, 16), 20.0, 6)
    expected = reference_ssim(a / 255.0, b / 255.0)
    assert ssim(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(expected, abs=1e-9)


def test_ssim_pil_and_tensor_agree() -> None:
    a, b = random_rgb(7, 20), noisy(random_rgb(7, 20), 15.0, 8)
    as_tensor = [torch.from_numpy(x).permute(2, 0, 1).double() / 127.5 - 1 for x in (a, b)]
    assert ssim(as_tensor[0].unsqueeze(0), as_tensor[1].unsqueeze(0)) == pytest.approx(
        ssim(Image.fromarray(a), Image.fromarray(b)), abs=1e-9
    )


def smooth_rgb(size: int = 32) -> np.ndarray:
    """A smooth 8-bit RGB test picture: horizontal and vertical ramps and a constant channel."""
    ramp = np.linspace(40, 215, size)
    channels = [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128.0)]
    return np.stack(channels, axis=2).round().astype(np.uint8)


def test_ssim_drops_monotonically_with_noise() -> None:
    base = smooth_rgb()
    scores = [ssim(Image.fromarray(base), Image.fromarray(noisy(base, sigma, 10))) for sigma in (2, 8, 20, 50)]
    assert all(earlier > later for earlier, later in zip(scores, scores[1:]))
    assert scores[0] > 0.9 and scores[-1] < 0.1


def test_ssim_small_images_work() -> None:
    a, b = random_rgb(11, 16), noisy(random_rgb(11, 16), 10.0, 12)
    value = ssim(Image.fromarray(a), Image.fromarray(b))
    assert 0.0 < value < 1.0
    smallest = torch.rand(1, 3, 11, 11) * 2 - 1  # one valid window
    assert ssim(smallest, smallest.clone()) == pytest.approx(1.0, abs=1e-6)
    assert ssim(smallest, -smallest) < 0.5
    with pytest.raises(ValueError, match="too small"):  # torchmetrics' window is 11x11 for sigma 1.5
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_ssim_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


# --- latent MSE ---------------------------------------------------------------------------------


def test_latent_mse_known_value() -> None:
    a = torch.zeros(1, 4, 8, 8)
    b = torch.zeros(1, 4, 8, 8)
    b[:, :2] = 3.0  # half the elements differ by 3
    assert latent_mse(a, b) == pytest.approx(4.5, abs=1e-12)
    assert latent_mse(b, a) == latent_mse(a, b)
    assert latent_mse(a, a) == 0.0


def test_latent_mse_accepts_arrays_and_half_precision() -> None:
    a = (np.arange(16, dtype=np.float32) / 8 - 1).reshape(1, 1, 4, 4)  # exact in float16
    b = torch.from_numpy(a + 0.5).half()
    assert latent_mse(a, b) == pytest.approx(0.25, abs=1e-6)


def test_latent_mse_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        latent_mse(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 9))


# --- torchmetrics against the hand-written implementation it replaced --------------------------
# The expected numbers were computed by the hand-written float64 PSNR/SSIM this module had before it
# moved to torchmetrics (commit "metrics: pin the hand-written numbers"), on these fixed images.


def test_numbers_match_the_previous_hand_written_implementation() -> None:
    a, s = random_rgb(21, 64), smooth_rgb(48)
    b, t = noisy(a, 12.0, 22), noisy(s, 6.0, 23)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:40, 5:50] = True
    A, B, S, T = (Image.fromarray(v) for v in (a, b, s, t))
    assert psnr(A, B) == pytest.approx(26.598760568707604, rel=PSNR_REL)
    assert psnr(S, T) == pytest.approx(32.491020547244545, rel=PSNR_REL)
    assert psnr(A, B, mask=mask) == pytest.approx(26.516354533504128, rel=PSNR_REL)
    assert ssim(A, B) == pytest.approx(0.9813213746875988, abs=1e-9)
    assert ssim(S, T) == pytest.approx(0.730081982150964, abs=1e-9)
    x, y = (torch.from_numpy(v).permute(2, 0, 1)[None].double() / 127.5 - 1 for v in (a, b))
    assert psnr(x, y) == pytest.approx(26.598760568707604, rel=PSNR_REL)
    assert ssim(x, y) == pytest.approx(0.9813213746875988, abs=1e-9)
    assert latent_mse(x, y) == pytest.approx(0.008753544309880816, abs=1e-15)


def test_masked_mse_and_ssim() -> None:
    base = smooth_rgb(32)
    edited = base.copy()
    edited[:, 16:] = 255 - edited[:, 16:]  # right half changed
    left = np.zeros((32, 32), dtype=bool)
    left[:, :16] = True
    A, B = Image.fromarray(base), Image.fromarray(edited)
    assert mse(A, B, mask=left) == 0.0
    assert mse(A, B) == pytest.approx(float(((base[:, 16:] / 255.0 - edited[:, 16:] / 255.0) ** 2).sum()) / base.size)
    left_far = np.zeros((32, 32), dtype=bool)
    left_far[:, :10] = True  # windows centred here do not reach the changed half
    assert ssim(A, B, mask=left_far) == pytest.approx(1.0, abs=1e-9)
    assert ssim(A, B) < 0.8
    with pytest.raises(ValueError, match="inside the image"):
        ssim(A, B, mask=np.pad(np.ones((1, 32), dtype=bool), ((0, 31), (0, 0))))

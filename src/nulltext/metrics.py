"""Image and latent similarity metrics: PSNR (optionally over a mask), SSIM and latent MSE.

Inputs are PIL images (8-bit, data range 255) or tensors/arrays. Everything is computed in
float64 on the CPU so results are reproducible to well below 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

ArrayLike = torch.Tensor | np.ndarray
ImageLike = Image.Image | torch.Tensor | np.ndarray


def _pil_to_chw(image: Image.Image) -> torch.Tensor:
    """An 8-bit PIL image as a float64 (C, H, W) tensor with values 0..255."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float64)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _as_float64(value: ArrayLike) -> torch.Tensor:
    """A tensor or array as a detached float64 CPU tensor."""
    return torch.as_tensor(value).detach().to("cpu", torch.float64)


def _pair(a: ImageLike, b: ImageLike) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both inputs as float64 tensors of equal shape, and whether they were PIL images."""
    a_pil, b_pil = isinstance(a, Image.Image), isinstance(b, Image.Image)
    if a_pil != b_pil:
        raise TypeError("compare two PIL images or two tensors/arrays, not one of each")
    x, y = (_pil_to_chw(a), _pil_to_chw(b)) if a_pil else (_as_float64(a), _as_float64(b))
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y, a_pil


def _default_range(x: torch.Tensor, y: torch.Tensor) -> float:
    """2.0 when both tensors lie in [-1, 1]; otherwise the caller must say."""
    if min(x.min().item(), y.min().item()) >= -1.0 and max(x.max().item(), y.max().item()) <= 1.0:
        return 2.0
    raise ValueError("tensors are not both in [-1, 1]; pass data_range (e.g. 1.0 or 255.0)")


def psnr(
    a: ImageLike,
    b: ImageLike,
    data_range: float | None = None,
    *,
    mask: ArrayLike | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB between ``a`` and ``b``; ``inf`` when they are identical.

    PIL images use data range 255. For tensors/arrays ``data_range`` defaults to 2.0 only when
    both lie in [-1, 1] (the model's pixel range; pass 1.0 for [0, 1] data) and is required
    otherwise. ``mask`` is a boolean (H, W) array selecting the pixels to compare (e.g. the
    background); it applies to the last two dimensions of tensors and to every channel.
    """
    x, y, from_pil = _pair(a, b)
    if x.numel() == 0:
        raise ValueError("cannot compute PSNR of empty inputs")
    peak = float(data_range) if data_range is not None else (255.0 if from_pil else _default_range(x, y))
    if peak <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    error = (x - y) ** 2
    if mask is not None:
        selected = torch.as_tensor(mask).to("cpu", torch.bool)
        if x.dim() < 2 or selected.shape != x.shape[-2:]:
            raise ValueError(f"mask shape {tuple(selected.shape)} does not match image (H, W) {tuple(x.shape[-2:])}")
        if not bool(selected.any()):
            raise ValueError("mask selects no pixels")
        error = error[selected.expand_as(error)]
    mse = error.mean().item()
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def _to_unit_batch(value: ImageLike) -> torch.Tensor:
    """An image as a float64 (B, C, H, W) tensor in [0, 1]: PIL from 0..255, tensors from [-1, 1]."""
    if isinstance(value, Image.Image):
        return (_pil_to_chw(value) / 255.0).unsqueeze(0)
    tensor = _as_float64(value)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 3 else tensor
    if tensor.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) or (C, H, W) tensor, got shape {tuple(tensor.shape)}")
    return (tensor + 1.0) / 2.0


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    """A normalised 2-D gaussian kernel of ``size`` x ``size``, one copy per channel for conv2d."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    line = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    line = line / line.sum()
    return torch.outer(line, line).expand(channels, 1, size, size).contiguous()


def ssim(a: ImageLike, b: ImageLike) -> float:
    """Mean SSIM (Wang et al. 2004) over each RGB channel, averaged.

    Uses an 11x11 gaussian window (sigma 1.5, shrunk to an odd size that fits smaller images),
    K1 = 0.01, K2 = 0.03 and data range 1 after mapping PIL 0..255 or tensor [-1, 1] to [0, 1];
    only windows fully inside the image are used (the original "valid" filtering).
    """
    x, y = _to_unit_batch(a), _to_unit_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    channels, height, width = x.shape[1:]
    size = min(SSIM_WINDOW, height, width)
    size = size if size % 2 == 1 else size - 1
    if size < 1:
        raise ValueError(f"image of {width}x{height} px is too small for SSIM")
    window = _gaussian_window(size, SSIM_SIGMA, channels)

    def blur(value: torch.Tensor) -> torch.Tensor:
        """Gaussian-weighted local mean of each channel."""
        return F.conv2d(value, window, groups=channels)

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean().item()


def latent_mse(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared error between two latents (or any tensors) of the same shape."""
    x, y = _as_float64(a), _as_float64(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.numel() == 0:
        raise ValueError("cannot compute MSE of empty tensors")
    return ((x - y) ** 2).mean().item()

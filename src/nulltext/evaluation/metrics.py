"""Image and latent similarity metrics: PSNR, MSE and SSIM (each optionally over a mask), latent MSE.

The numbers come from torchmetrics; this module only adapts inputs (PIL images, arrays, tensors in
[-1, 1]) and adds masks, which torchmetrics does not have:

- PSNR and MSE over a mask: the selected pixels (every channel) are passed to torchmetrics as flat
  vectors, so the mean runs over the selected pixels only.
- SSIM: torchmetrics' gaussian SSIM (11×11, σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1) returns its
  full SSIM map over a reflection-padded image; we average the map over the windows that lie wholly
  inside the image (the original "valid" filtering of Wang et al. 2004, which this module always used;
  torchmetrics' own mean also counts the padded border windows and is ≈ 6e-4 higher on 64 px images).
  With a mask, the average runs over the valid windows centred on selected pixels. Images need at
  least 11×11 pixels (torchmetrics derives the window from σ).

Inputs are computed in float64 on the CPU. torchmetrics converts dB with a float32 ln 10, so PSNR
agrees with the exact formula to ~1e-6 dB, not to machine precision.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.classification import binary_jaccard_index
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

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


def _mask(mask: ArrayLike, shape: torch.Size) -> torch.Tensor:
    """A boolean (H, W) mask checked against an image's last two dimensions."""
    selected = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to("cpu", torch.bool)
    if len(shape) < 2 or selected.shape != shape[-2:]:
        raise ValueError(f"mask shape {tuple(selected.shape)} does not match image (H, W) {tuple(shape[-2:])}")
    if not bool(selected.any()):
        raise ValueError("mask selects no pixels")
    return selected


def _selected(a: ImageLike, b: ImageLike, data_range: float | None, mask: ArrayLike | None):
    """Flat vectors of the compared values (every channel of the selected pixels) and the peak."""
    x, y, from_pil = _pair(a, b)
    if x.numel() == 0:
        raise ValueError("cannot compare empty inputs")
    peak = float(data_range) if data_range is not None else (255.0 if from_pil else _default_range(x, y))
    if peak <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if mask is not None:
        selected = _mask(mask, x.shape).expand_as(x)
        return x[selected], y[selected], peak
    return x.reshape(-1), y.reshape(-1), peak


def vae_bound(model, photo: Image.Image, z0: torch.Tensor | None = None) -> float:
    """PSNR of the photo through the VAE alone (encode, decode): the bound any inversion's reconstruction meets."""
    from nulltext.io.images import to_pil, to_tensor

    z0 = model.encode_image(to_tensor(photo)) if z0 is None else z0
    return psnr(to_pil(model.decode_latents(z0))[0], photo)


def psnr(a: ImageLike, b: ImageLike, data_range: float | None = None, *, mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio in dB between ``a`` and ``b``; ``inf`` when they are identical.

    PIL images use data range 255. For tensors/arrays ``data_range`` defaults to 2.0 only when
    both lie in [-1, 1] (the model's pixel range; pass 1.0 for [0, 1] data) and is required
    otherwise. ``mask`` is a boolean (H, W) array selecting the pixels to compare (e.g. the
    background); it applies to the last two dimensions of tensors and to every channel.
    """
    x, y, peak = _selected(a, b, data_range, mask)
    if torch.equal(x, y):
        return math.inf
    return peak_signal_noise_ratio(x, y, data_range=peak).item()


def mse(a: ImageLike, b: ImageLike, *, mask: ArrayLike | None = None) -> float:
    """Mean squared pixel error on the [0, 1] scale (PIL 0..255 / 255, tensors from [-1, 1]), optionally masked."""
    x, y, peak = _selected(a, b, None, mask)
    return mean_squared_error(x / peak, y / peak).item()


def _to_unit_batch(value: ImageLike) -> torch.Tensor:
    """An image as a float64 (B, C, H, W) tensor in [0, 1]: PIL from 0..255, tensors from [-1, 1]."""
    if isinstance(value, Image.Image):
        return (_pil_to_chw(value) / 255.0).unsqueeze(0)
    tensor = _as_float64(value)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 3 else tensor
    if tensor.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) or (C, H, W) tensor, got shape {tuple(tensor.shape)}")
    return (tensor + 1.0) / 2.0


def ssim_map(a: ImageLike, b: ImageLike) -> torch.Tensor:
    """torchmetrics' per-pixel SSIM map (B, C, H, W) of two images mapped to [0, 1] (see the module doc)."""
    x, y = _to_unit_batch(a), _to_unit_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    height, width = x.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"image of {width}x{height} px is too small for SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")
    _, full = structural_similarity_index_measure(x, y, gaussian_kernel=True, sigma=SSIM_SIGMA,
                                                  kernel_size=SSIM_WINDOW, data_range=1.0, k1=SSIM_K1, k2=SSIM_K2,
                                                  return_full_image=True)
    return full


def ssim(a: ImageLike, b: ImageLike, *, mask: ArrayLike | None = None) -> float:
    """Mean SSIM (Wang et al. 2004) over the valid windows of every channel; with ``mask``, of windows centred there."""
    full = ssim_map(a, b)
    pad = SSIM_WINDOW // 2
    valid = torch.zeros(full.shape[-2:], dtype=torch.bool)
    valid[pad:-pad, pad:-pad] = True
    if mask is not None:
        valid &= _mask(mask, full.shape)
        if not bool(valid.any()):
            raise ValueError(f"mask selects no pixel at least {pad} px inside the image")
    return full[..., valid].mean().item()


def iou(a: ArrayLike, b: ArrayLike) -> float:
    """Intersection over union of two boolean (H, W) masks (torchmetrics' binary Jaccard index); 1 if both are empty."""
    x, y = torch.as_tensor(np.asarray(a, dtype=bool)), torch.as_tensor(np.asarray(b, dtype=bool))
    if x.shape != y.shape:
        raise ValueError(f"mask shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if not bool((x | y).any()):
        return 1.0
    return binary_jaccard_index(x.int(), y.int()).item()


def latent_mse(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared error between two latents (or any tensors) of the same shape."""
    x, y = _as_float64(a), _as_float64(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.numel() == 0:
        raise ValueError("cannot compute MSE of empty tensors")
    return mean_squared_error(x.reshape(-1), y.reshape(-1)).item()

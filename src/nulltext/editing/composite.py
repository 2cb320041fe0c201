"""The photo back outside the edit: local blend's mask applied once more, in pixels, after decoding.

Local blend (Hertz et al. 2022, sec. 3.2) keeps the source row's *latent* outside its mask. Two things
still change those pixels: the source row is the reconstruction, not the photo (a VAE round trip and
the inversion's residual away from it), and the VAE decoder spreads every latent cell over its
neighbours, so the mask's edge seeps into the background. Inpainting tools paste the original back
through a feathered mask; so does this:

    w   = blur_σ( maxpool_ρ( clamp((‖x_edit − x_rec‖ − lo) / (hi − lo), 0, 1) ) · bound_μ(M) )   (in [0, 1])
    out = photo + w · (x_edit − photo)

- the gate keeps the edit only where it moved a pixel away from the reconstruction (per-pixel RGB
  distance on the [0, 1] scale): outside the blend mask the latents are the source's, so nothing moves
  there, and the dilation ring around an object the edit did not move comes back as the photo too;
  the attention mask itself is not multiplied in as it is — its coarse edge would cut a new shape's corners
  or leave stripes of the old background (measured: accuracy on background swaps 100 % → 75 % with it);
- maxpool_ρ: the edit also kept within ρ of a pixel it moved. The decoder blurs a shape's thin parts (a
  triangle's tips), so where the edit removes the shape it barely moves them from the reconstruction;
  the photo put back there would leave specks of the old shape (measured: colour + shape swaps with
  blend 90 → 97 % right, N = 30; the background outside the edit 0.97 dB further from the photo);
- bound_μ(M): local blend's final latent mask M, brought to image size and widened by μ, bounds the edit.
  Outside M the edit's latents are the source's, yet the decoder's group norms and attention see the whole
  latent, so a change inside M moves pixels anywhere, most at the image's corners (measured: a red circle
  turned into a white square on yellow left two corner pixels pale enough for the judge to count them as
  shape, so it read the bounding box as the whole image, "triangle"). Beyond μ of M the photo is put
  back, whatever the decoder did (colour + shape swaps with blend, N = 30: 97 → 100 % right, no other
  edit changed). μ = 3/32 of the side is 1.5 latent cells on the bundled model: 1/16 lets a seam show
  where the mask misses a thin strip of background, 1/8 reaches the corners again;
- blur_σ: a Gaussian feather. σ, ρ and μ are fractions of the image side, so they mean the same at 64 px
  and at 1024 px.

The authors' behaviour (latent blend only, the decoder's output everywhere) is `composite="off"`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nulltext.editing.config import EditConfig


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with standard deviation `sigma` pixels, edges replicated."""
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def widen(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Max-pool (n, 1, H, W) over a radius of `fraction` of the image side, at least one pixel."""
    r = max(1, round(fraction * max(x.shape[-2:])))
    return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)  # (n, 1, H, W)


def mask_bound(masks: torch.Tensor, image_hw: tuple[int, int], margin: float) -> torch.Tensor:
    """(n, 1, H, W) in {0, 1}: local blend's latent masks (n, h, w) brought to image size (nearest) and
    widened by `margin` of the image side (at least one pixel)."""
    return widen(F.interpolate(masks[:, None].float(), size=image_hw, mode="nearest"), margin)


def composite_weights(edits: torch.Tensor, reconstruction: torch.Tensor, config: EditConfig,
                      masks: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 1, H, W) weights in [0, 1] of each edit (n, 3, H, W) over the photo, given the reconstruction (1, 3, H, W)
    and local blend's latent masks (n, h, w), if any."""
    H, W = edits.shape[-2:]
    lo, hi = config.composite_change
    moved = (edits - reconstruction).norm(dim=1, keepdim=True) / 2  # (n, 1, H, W): RGB distance on the [0, 1] scale
    gate = ((moved - lo) / (hi - lo)).clamp(0, 1)
    if config.composite_reach > 0:
        gate = widen(gate, config.composite_reach)
    if masks is not None and config.composite_margin is not None:
        gate = gate * mask_bound(masks, (H, W), config.composite_margin).to(gate)
    return gaussian_blur(gate, config.composite_feather * max(H, W)).clamp(0, 1)


def composite(edits: torch.Tensor, photo: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """photo + w · (edit − photo): (n, 3, H, W) images in [-1, 1]."""
    return photo + weights * (edits - photo)

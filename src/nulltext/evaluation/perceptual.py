"""Metrics that need network weights: LPIPS, CLIP score and the DINO structure distance.

PIE-Bench (Ju et al., ICLR 2024) reports them beside PSNR/SSIM/MSE. Each runs only when its weights
are on this machine; otherwise it is skipped with a one-line reason and nothing is downloaded:

- LPIPS: torchmetrics' `LearnedPerceptualImagePatchSimilarity(net_type="squeeze")`, PIE-Bench's
  choice. torchmetrics ships the linear layers; the SqueezeNet backbone comes from torchvision's
  weight file, looked up in `<torch hub dir>/checkpoints/` (`PerceptualConfig.lpips` names another
  hub dir). Needs torchvision.
- CLIP score, as torchmetrics' `CLIPScore` defines it (PIE-Bench's choice): 100 · cos(E_image, E_text),
  floored at 0, with a CLIP model loaded from a local folder or the Hugging Face cache
  (`local_files_only`); PIE-Bench uses openai/clip-vit-large-patch14. It is computed here from the
  model's own projected embeddings: torchmetrics 1.9.0, the latest release, fails on transformers 5,
  whose `get_image_features` returns a model output instead of a tensor (torchmetrics issue #3407,
  fixed after that release). Text longer than the model's positions is cut to them, as torchmetrics does.
- Structure distance (Tumanyan et al. 2022, as PIE-Bench computes it): the MSE between the cosine
  self-similarity matrices of the last layer's attention keys (all heads concatenated, CLS included)
  of a DINO ViT (PIE-Bench: dino_vitb8) for the two images, resized to 224 px and ImageNet-normalised.
  Like PIE-Bench's code we feed 0…255 pixel values to that normalisation (it does not divide by 255),
  so the numbers compare with its tables. The ViT is a transformers `ViTModel` folder (e.g.
  facebook/dino-vitb8).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nulltext.errors import first_line
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PerceptualConfig:
    """Where the weights are; None means: look in the default caches only (LPIPS) or skip (CLIP, DINO)."""

    lpips: str | None = None  # a torch hub dir whose checkpoints/ holds torchvision's squeezenet1_1 weights
    clip: str | None = None  # a CLIP folder or a hub id already in the Hugging Face cache
    dino: str | None = None  # a DINO ViT folder (transformers ViTModel) or a cached hub id
    device: str = "cpu"
    dino_size: int = 224  # PIE-Bench's resize before DINO


@dataclass
class Perceptual:
    """The loaded metric models (None when skipped) and why each skipped one was skipped."""

    lpips: object | None = None
    clip: object | None = None  # (CLIPModel, CLIPProcessor)
    dino: object | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    dino_size: int = 224


def _lpips(path: str | None, device: str):
    if importlib.util.find_spec("torchvision") is None:
        raise LookupError("needs torchvision (pip install torchvision) for the SqueezeNet backbone")
    import torchvision

    hub = Path(path) if path else Path(torch.hub.get_dir())
    url = torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url
    weights = hub / "checkpoints" / url.rsplit("/", 1)[-1]
    if not weights.exists():
        raise LookupError(f"no SqueezeNet weights at {weights} (pass --lpips HUB_DIR holding checkpoints/{weights.name})")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        return LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=True).to(device).eval()
    finally:
        torch.hub.set_dir(previous)


def _clip(path: str | None, device: str):
    if not path:
        raise LookupError("no CLIP weights given (--clip PATH: a local openai/clip-vit-large-patch14 folder)")
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise LookupError(f"no CLIP model at {path!r} on this machine ({first_line(e)})") from None
    return model, processor


def _dino(path: str | None, device: str):
    if not path:
        raise LookupError("no DINO weights given (--dino PATH: a local facebook/dino-vitb8 folder)")
    from transformers import ViTModel

    try:
        return ViTModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False).to(device).eval()
    except OSError as e:
        raise LookupError(f"no DINO ViT at {path!r} on this machine ({first_line(e)})") from None


def load_perceptual(config: PerceptualConfig) -> Perceptual:
    """Load what is available; record a reason for each metric that is not."""
    result = Perceptual(device=config.device, dino_size=config.dino_size)
    for name, loader, where in (("lpips", _lpips, config.lpips), ("clip", _clip, config.clip),
                                ("structure_distance", _dino, config.dino)):
        try:
            model = loader(where, config.device)
        except LookupError as e:
            result.skipped[name] = str(e)
            continue
        setattr(result, "dino" if name == "structure_distance" else name, model)
    return result


def _unit(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _keep(image: Image.Image, keep: np.ndarray | None) -> Image.Image:
    """The image with the pixels outside `keep` set to black (PIE-Bench's way of restricting a metric)."""
    if keep is None:
        return image
    return Image.fromarray((np.asarray(image.convert("RGB")) * keep[..., None]).astype(np.uint8))


@torch.no_grad()
def lpips(p: Perceptual, a: Image.Image, b: Image.Image, keep: np.ndarray | None = None) -> float | None:
    """LPIPS between two images, both restricted to `keep` (H, W) bool by zeroing the rest; None if skipped."""
    if p.lpips is None:
        return None
    return float(p.lpips(_unit(_keep(a, keep)).to(p.device), _unit(_keep(b, keep)).to(p.device)))


@torch.no_grad()
def clip_score(p: Perceptual, image: Image.Image, text: str, keep: np.ndarray | None = None) -> float | None:
    """CLIP score 100 · max(cos(E_image, E_text), 0) of an image (restricted to `keep`) and a text; None if skipped."""
    if p.clip is None:
        return None
    model, processor = p.clip
    pixels = torch.from_numpy(np.asarray(_keep(image, keep).convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    inputs = processor(text=[text], images=[pixels], return_tensors="pt", padding=True, truncation=True,
                       max_length=model.config.text_config.max_position_embeddings)
    out = model(**inputs.to(p.device))  # image_embeds, text_embeds: projected, unit length
    return max(0.0, 100 * float((out.image_embeds * out.text_embeds).sum()))


def _dino_keys_self_similarity(model, image: Image.Image, size: int, device: str) -> torch.Tensor:
    """Cosine self-similarity (tokens, tokens) of the last layer's attention keys."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]  # 0…255
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    x = ((x - mean) / std).to(device)
    keys = [m for n, m in model.named_modules() if n.endswith(("k_proj", "attention.key"))]
    captured = {}
    handle = keys[-1].register_forward_hook(lambda mod, inp, out: captured.__setitem__("k", out))
    try:
        model(pixel_values=x, interpolate_pos_encoding=True)
    finally:
        handle.remove()
    k = captured["k"][0]  # (tokens, heads · head_dim)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return k @ k.T


@torch.no_grad()
def structure_distance(p: Perceptual, a: Image.Image, b: Image.Image) -> float | None:
    """PIE-Bench's structure distance between two images (0 = same structure); None if skipped."""
    if p.dino is None:
        return None
    sa = _dino_keys_self_similarity(p.dino, a, p.dino_size, p.device)
    sb = _dino_keys_self_similarity(p.dino, b, p.dino_size, p.device)
    return float(F.mse_loss(sb, sa))

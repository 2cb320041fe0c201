"""Which architectures nulltext drives, and one-line refusals of the others (folders, configs, checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from nulltext.errors import first_line, short
from nulltext.model.errors import ModelLoadError

# Pipelines whose components nulltext drives, by the `_class_name` of their model_index.json: one
# UNet2DConditionModel on the VAE's latents, one CLIP text encoder (SDXL: two, the second with a
# projection that gives the pooled embedding); or SD 3.x's MMDiT transformer with two projecting CLIP
# encoders and an optional T5. To support a family, add it here and give `Model` what differs
# (DESIGN.md: "Model families").
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "Stable Diffusion 1.x/2.x",
    "StableDiffusionImg2ImgPipeline": "Stable Diffusion 1.x/2.x",
    "StableDiffusionXLPipeline": "SDXL",
    "StableDiffusionXLImg2ImgPipeline": "SDXL",
    "StableDiffusion3Pipeline": "SD 3.x",
    "StableDiffusion3Img2ImgPipeline": "SD 3.x",
}
# guidance-distilled models: one text branch, guidance as an input, so no unconditional branch to optimise
_DISTILLED = ("a guidance-distilled transformer: it has no unconditional branch of classifier-free guidance for "
              "null-text inversion to optimise")
# Known pipelines that are not supported, and what they are, for a clearer refusal.
UNSUPPORTED_PIPELINES = {
    "FluxPipeline": f"FLUX.1, {_DISTILLED}", "FluxImg2ImgPipeline": f"FLUX.1, {_DISTILLED}",
    "FluxKontextPipeline": f"FLUX.1 Kontext, {_DISTILLED}",
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting model (9-channel UNet)",
    "StableDiffusionImageVariationPipeline": "an image-variation model (conditioned on an image, no text encoder)",
    "StableUnCLIPImg2ImgPipeline": "an unCLIP image-variation model",
    "StableDiffusionInpaintPipeline": "an inpainting model (9-channel UNet)",
    "StableDiffusionDepth2ImgPipeline": "a depth-conditioned model", "StableDiffusionUpscalePipeline": "an upscaler",
    "PixArtAlphaPipeline": "PixArt (a transformer)", "KandinskyV22Pipeline": "Kandinsky",
}
_FAMILIES = list(dict.fromkeys(SUPPORTED_PIPELINES.values()))
SUPPORTED_TEXT = "nulltext supports " + ", ".join(_FAMILIES[:-1]) + " and " + _FAMILIES[-1] + \
    " models (" + ", ".join(SUPPORTED_PIPELINES) + ")"


def _get(config: Any, key: str, default: Any = None) -> Any:
    """A config value: diffusers' configs are dicts, transformers' objects."""
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def check_architecture(source: str, pipeline: str | None, unet: Any, vae: Any, text_encoder: Any,
                       text_encoder_2: Any = None, text_encoder_3: Any = None) -> None:
    """Raise ModelLoadError unless the configs describe a model nulltext can drive (SUPPORTED_PIPELINES).

    One UNet2DConditionModel on the VAE's latents (as many channels in and out), conditioned through
    cross-attention on CLIP token features and, with SDXL's `text_time` added embedding, on a pooled
    embedding of a second encoder plus the six size ids; nothing else added to its time embedding.
    """
    def refuse(found: str) -> None:
        raise ModelLoadError(f"cannot load model {source!r}: it is {found} — {SUPPORTED_TEXT}")

    if pipeline is not None and pipeline not in SUPPORTED_PIPELINES:
        refuse(f"a {pipeline}" + (f", {UNSUPPORTED_PIPELINES[pipeline]}" if pipeline in UNSUPPORTED_PIPELINES else ""))
    if unet is None or vae is None:
        refuse("missing its " + ("UNet" if unet is None else "VAE"))
    if _get(unet, "joint_attention_dim") is not None:
        return _check_joint(refuse, unet, vae, text_encoder, text_encoder_2, text_encoder_3)
    if text_encoder is None:
        refuse("a model without a text encoder (an image-variation model, or an SDXL refiner?)")
    latent, c_in, c_out = _get(vae, "latent_channels", 4), _get(unet, "in_channels"), _get(unet, "out_channels")
    if c_in != latent or c_out != latent:
        refuse(f"a model whose UNet takes {c_in} and gives {c_out} channels while its VAE makes {latent} "
               "(an inpainting or depth model?)")
    added, classes = _get(unet, "addition_embed_type"), _get(unet, "class_embed_type")
    if classes is not None or added not in (None, "text_time"):
        refuse(f"a model with extra UNet conditioning ({added or classes}, e.g. an upscaler or image-variation model)")
    hidden = _get(text_encoder, "hidden_size")
    if added == "text_time":
        if text_encoder_2 is None:
            refuse("a UNet with SDXL's text_time added embedding but no second text encoder for its pooled embedding")
        pooled, ids = _get(text_encoder_2, "projection_dim"), _get(unet, "addition_time_embed_dim")
        expected = _get(unet, "projection_class_embeddings_input_dim")
        if not isinstance(ids, int) or expected != 6 * ids + pooled:
            refuse(f"an SDXL-type UNet whose added embedding takes {expected} values, not 6 size ids × {ids} + the "
                   f"{pooled}-wide pooled embedding (an SDXL refiner with aesthetic-score ids?)")
        hidden = hidden + _get(text_encoder_2, "hidden_size")
    elif text_encoder_2 is not None:
        refuse("a model with a second text encoder but a UNet without SDXL's added text-time embedding")
    if _get(unet, "cross_attention_dim") != hidden:
        refuse(f"a model whose UNet attends to {_get(unet, 'cross_attention_dim')}-wide text features while its text "
               f"encoder{'s give' if text_encoder_2 is not None else ' gives'} {hidden}")


def _check_joint(refuse, transformer: Any, vae: Any, clip_l: Any, clip_g: Any, t5: Any) -> None:
    """SD 3.x: an MMDiT on the VAE's latents, reading both CLIPs' features (padded) and T5's, and their pooled pair."""
    latent, c_in, c_out = _get(vae, "latent_channels", 4), _get(transformer, "in_channels"), _get(transformer, "out_channels")
    if c_in != latent or c_out != latent:
        refuse(f"a transformer that takes {c_in} and gives {c_out} channels while its VAE makes {latent}")
    if clip_l is None or clip_g is None:
        refuse("an SD 3.x-type transformer without its two CLIP text encoders")
    width, pooled = _get(transformer, "joint_attention_dim"), _get(transformer, "pooled_projection_dim")
    hidden = _get(clip_l, "hidden_size") + _get(clip_g, "hidden_size")
    projected = (_get(clip_l, "projection_dim") or 0) + (_get(clip_g, "projection_dim") or 0)
    if hidden > width or projected != pooled:
        refuse(f"an SD 3.x-type transformer reading {width}-wide text and a {pooled}-wide pooled vector while its "
               f"CLIP encoders give {hidden} and {projected}")
    if t5 is not None and _get(t5, "d_model") != width:
        refuse(f"an SD 3.x-type transformer reading {width}-wide text while its T5 encoder gives {_get(t5, 'd_model')}")


def index_family(index: dict) -> str:
    """The family ("sd", "sdxl", "sd3") a diffusers model_index.json describes, by its components."""
    if "transformer" in index:
        return "sd3"
    second = index.get("text_encoder_2")
    return "sdxl" if second and second[0] is not None else "sd"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_folder(source: str, path: Path) -> dict:
    """Refuse a diffusers folder of another architecture from its configs, before any weights are read; its index."""
    index = _read_json(path / "model_index.json")
    if index is None:
        raise ModelLoadError(f"cannot load model {source!r}: the folder has no readable model_index.json — pass a "
                             "diffusers folder (as written by save_pretrained), a .safetensors file or a hub id")
    pipeline = str(index.get("_class_name"))
    if "transformer" in index and "unet" not in index and pipeline not in SUPPORTED_PIPELINES:
        what = UNSUPPORTED_PIPELINES.get(pipeline, "a diffusion transformer that is not SD 3.x")
        raise ModelLoadError(f"cannot load model {source!r}: it is a {pipeline}, {what} — {SUPPORTED_TEXT}")
    denoiser = "transformer" if "transformer" in index else "unet"
    if (denoiser == "transformer") != (SUPPORTED_PIPELINES.get(pipeline) == "SD 3.x") and pipeline in SUPPORTED_PIPELINES:
        raise ModelLoadError(f"cannot load model {source!r}: it is a {pipeline} without its "
                             f"{'UNet' if denoiser == 'transformer' else 'transformer'} — {SUPPORTED_TEXT}")
    configs = {name: _read_json(path / name / "config.json") if index.get(name) and index[name][0] is not None else None
               for name in (denoiser, "vae", "text_encoder", "text_encoder_2", "text_encoder_3")}
    check_architecture(source, pipeline, *configs.values())
    return index


# tensor-name prefixes of an original-format (CompVis/Stability) checkpoint, by family: SD 1.x/2.x, SDXL's two
# encoders, SD 3.x's MMDiT (its text encoders may be in the file or not)
_PREFIXES = {"sd": ("model.diffusion_model.input_blocks.", "first_stage_model.", "cond_stage_model."),
             "sdxl": ("model.diffusion_model.input_blocks.", "first_stage_model.", "conditioner.embedders."),
             "sd3": ("model.diffusion_model.joint_blocks.", "first_stage_model.")}
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "sd3": "SD 3.x"}


def checkpoint_keys(source: str, path: Path) -> list[str]:
    """The tensor names of a .safetensors file; ModelLoadError (one line) if it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise ModelLoadError(f"cannot load model {source!r}: not a readable .safetensors file "
                             f"({first_line(e, 80)}) — pass a Stable Diffusion checkpoint") from None


def check_checkpoint_keys(source: str, keys: list[str]) -> str:
    """The family ("sd", "sdxl", "sd3") of an original-format checkpoint's tensor names; refuses anything else."""
    for family, prefixes in _PREFIXES.items():
        if all(any(k.startswith(p) for k in keys) for p in prefixes):
            return family
    missing = [p for p in _PREFIXES["sd"] if not any(k.startswith(p) for k in keys)]
    if any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys):
        found = "an SD 3.x transformer checkpoint without its VAE (no first_stage_model.* tensors)"
    elif any(k.startswith(("double_blocks.", "transformer_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        found = f"a transformer checkpoint that is not SD 3.x (FLUX-like: {_DISTILLED})"
    else:
        found = f"not a Stable Diffusion checkpoint ({len(keys)} tensors, e.g. {short(keys[0], 40)!r}" \
                if keys else "not a Stable Diffusion checkpoint (no tensors"
        found += f"; none named {missing[0]}*)"
    raise ModelLoadError(f"cannot load model {source!r}: it is {found} — {SUPPORTED_TEXT}")

"""Loading a Stable Diffusion model, and what the rest of nulltext asks of it.

`load_model(source)` takes the bundled model (default), a hub id, a local diffusers folder, or a
single .safetensors/.ckpt checkpoint, and returns a `Model`: the UNet, VAE, text encoder(s),
tokenizer(s) and a DDIM scheduler built from the model's own scheduler config, on one device and
dtype, with a stable identity of the weights. Sizes, the VAE scaling factor and the prediction type
come from the model's configs, never from constants.

Model families (DESIGN.md): what differs between SD 1.x, SD 2.x and SDXL is kept here, as data the
algorithms receive. `text_conditioning` gives a `TextConditioning` (token embeddings and, for SDXL,
the pooled embedding); `null_conditioning` the unconditional ψ("") every family starts from (the
paper's ∅_T; SDXL's pipeline would use zeros when given no negative prompt, a worse start for the
optimisation: see README, "Model families"); `predict` adds SDXL's size micro-conditioning
(`add_time_ids`) derived from the latent. SD 2.x needs nothing
extra: its diffusers text encoder is already cut at OpenCLIP's penultimate layer (23 of 24 layers),
so its last hidden state is the penultimate feature the model was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from nulltext.core.conditioning import TextConditioning
from nulltext.errors import NulltextError, first_line, short

BUNDLED = "bundled"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelLoadError(NulltextError, RuntimeError):
    """A model that cannot be loaded; the message is one line naming the source and the fix."""


class PromptError(NulltextError, ValueError):
    """An empty, over-long or non-UTF-8 prompt; one line naming the prompt and the fix."""


class SizeError(NulltextError, ValueError):
    """An image size the model cannot use or the machine cannot hold; one line with the size and the fix."""


# Pipelines whose components nulltext drives, by the `_class_name` of their model_index.json: one
# UNet2DConditionModel on the VAE's latents, one CLIP text encoder (SDXL: two, the second with a
# projection that gives the pooled embedding). To support a family, add it here and give `Model`
# what differs (DESIGN.md: "Model families").
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "Stable Diffusion 1.x/2.x",
    "StableDiffusionImg2ImgPipeline": "Stable Diffusion 1.x/2.x",
    "StableDiffusionXLPipeline": "SDXL",
    "StableDiffusionXLImg2ImgPipeline": "SDXL",
}
# Known pipelines that are not supported, and what they are, for a clearer refusal.
UNSUPPORTED_PIPELINES = {
    "StableDiffusion3Pipeline": "Stable Diffusion 3 (a transformer, no UNet)", "FluxPipeline": "Flux (a transformer)",
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting model (9-channel UNet)",
    "StableDiffusionImageVariationPipeline": "an image-variation model (conditioned on an image, no text encoder)",
    "StableUnCLIPImg2ImgPipeline": "an unCLIP image-variation model",
    "StableDiffusionInpaintPipeline": "an inpainting model (9-channel UNet)",
    "StableDiffusionDepth2ImgPipeline": "a depth-conditioned model", "StableDiffusionUpscalePipeline": "an upscaler",
    "PixArtAlphaPipeline": "PixArt (a transformer)", "KandinskyV22Pipeline": "Kandinsky",
}
SUPPORTED_TEXT = "nulltext supports " + " and ".join(dict.fromkeys(SUPPORTED_PIPELINES.values())) + \
    " UNet models (" + ", ".join(SUPPORTED_PIPELINES) + ")"


def bundled_model_path() -> Path:
    return Path(__file__).parents[1] / "bundled" / "model"


@dataclass
class Model:
    """A loaded Stable Diffusion model: components, scheduler config, source and identity."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    source: str
    identity: str
    text_encoder_2: Any = None  # SDXL: the second encoder (with projection: the pooled embedding)
    tokenizer_2: Any = None

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at: sample_size × VAE factor."""
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (w * self.vae_scale_factor, h * self.vae_scale_factor)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor × the UNet's own downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def text_encoders(self) -> list[tuple[Any, Any]]:
        """(tokenizer, encoder) pairs whose token features are concatenated: one, or SDXL's two."""
        pairs = [(self.tokenizer, self.text_encoder)]
        return pairs if self.text_encoder_2 is None else pairs + [(self.tokenizer_2, self.text_encoder_2)]

    @property
    def text_dim(self) -> int:
        """Width of the token embeddings the UNet's cross-attention reads (SDXL: both encoders')."""
        return sum(int(enc.config.hidden_size) for _, enc in self.text_encoders)

    @property
    def pooled_dim(self) -> int | None:
        """Width of SDXL's pooled text embedding; None for models without one."""
        return None if self.text_encoder_2 is None else int(self.text_encoder_2.config.projection_dim)

    # -- text -----------------------------------------------------------------------------------

    def check_prompt(self, prompt: str, allow_empty: bool = False) -> None:
        """Raise PromptError for an empty, over-long or non-UTF-8 prompt."""
        check_prompt_text(prompt)
        if not prompt.strip() and not allow_empty:
            raise PromptError("the prompt is empty — describe the photo, e.g. --prompt \"a cat sitting next to a mirror\"")
        n = len(self.tokenizer(prompt).input_ids)
        if n > self.max_tokens:
            raise PromptError(
                f"prompt {short(prompt)!r} is {n} tokens long; this model reads at most {self.max_tokens} "
                "(start and end included) — shorten it"
            )

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings (batch, tokens, dim) in the model's dtype; "" gives ψ("")."""
        return self.text_conditioning(prompts).tokens

    @torch.no_grad()
    def text_conditioning(self, prompts: list[str]) -> TextConditioning:
        """Everything the UNet reads of the prompts, in the model's dtype.

        SD 1.x/2.x: the encoder's last hidden state (B, tokens, dim). SDXL (as its pipeline): each
        encoder's penultimate hidden state, concatenated (B, tokens, dim₁ + dim₂), and the second
        encoder's projected pooled embedding (B, P).
        """
        for p in prompts:
            self.check_prompt(p, allow_empty=True)
        if self.text_encoder_2 is None:
            return TextConditioning(self.text_encoder(self._token_ids(self.tokenizer, prompts))[0].to(self.dtype))
        features, pooled = [], None
        for tokenizer, encoder in self.text_encoders:
            out = encoder(self._token_ids(tokenizer, prompts), output_hidden_states=True)
            features.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's projected (B, P) text embedding
        return TextConditioning(torch.cat(features, dim=-1).to(self.dtype), pooled.to(self.dtype))

    def _token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def null_conditioning(self) -> TextConditioning:
        """ψ(""), a batch of one: the unconditional conditioning, ∅_T's start in Algorithm 1."""
        return self.text_conditioning([""])

    def added_conditioning(self, conditioning: TextConditioning, latents: torch.Tensor) -> dict | None:
        """SDXL's `added_cond_kwargs`: the pooled embedding and the size micro-conditioning; None for SD 1.x/2.x.

        `add_time_ids` are (original height, width, crop top, left, target height, width) in pixels,
        as the SDXL pipeline builds them by default: the image size from the latent, no crop.
        """
        if self.unet.config.addition_embed_type != "text_time":
            return None
        if conditioning.pooled is None:
            raise ValueError("this SDXL model needs pooled text embeddings — pass model.text_conditioning(...)")
        h, w = (int(s) * self.vae_scale_factor for s in latents.shape[-2:])
        ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).expand(latents.shape[0], -1)
        return {"text_embeds": conditioning.pooled.to(self.device, self.dtype), "time_ids": ids}

    def predict(self, latents: torch.Tensor, timestep: int, conditioning: TextConditioning | torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (ε, v or x0 by the scheduler's prediction type), as float32.

        `conditioning` is a TextConditioning, or for SD 1.x/2.x its token embeddings alone.
        """
        cond = TextConditioning.of(conditioning)
        t = torch.tensor(timestep, device=self.device)
        out = self.unet(latents.to(self.dtype), t, encoder_hidden_states=cond.tokens.to(self.dtype),
                        added_cond_kwargs=self.added_conditioning(cond, latents)).sample
        return out.float()

    # -- images ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """z0 = VAE posterior mean × scaling factor, for an image (B,3,H,W) in [-1,1]."""
        x = image.to(self.device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Image (B,3,H,W) in [-1,1], float32, from latents; one at a time, so results do not depend on the batch."""
        z = latents.to(self.device, self.vae.dtype) / self.scaling_factor
        return torch.cat([self.vae.decode(z[i : i + 1]).sample for i in range(z.shape[0])]).float().clamp(-1, 1)

    def check_size(self, size: tuple[int, int]) -> None:
        """Raise SizeError unless (width, height) fits the model's downsampling and the device's memory."""
        m = self.size_multiple
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size) or min(size) <= 0:
            raise SizeError(f"image size {size!r} must be two positive whole numbers — use e.g. "
                            f"--size {self.default_size[0]}x{self.default_size[1]}")
        if size[0] % m or size[1] % m:
            raise SizeError(f"image size {size[0]}x{size[1]} is not a multiple of {m} for this model — use e.g. "
                            f"--size {self.default_size[0]}x{self.default_size[1]}")
        needed, available = self.memory_needed(size), available_memory(self.device)
        if needed > available:
            raise SizeError(f"image size {size[0]}x{size[1]} needs at least {needed / 2**30:,.1f} GiB on "
                            f"{self.device.type} with this model, {available / 2**30:,.1f} GiB is available — "
                            f"use a smaller --size, e.g. {self.default_size[0]}x{self.default_size[1]}")

    def memory_needed(self, size: tuple[int, int]) -> int:
        """A lower bound of the bytes one inversion or edit of a (width, height) image needs beyond the weights.

        The photo in its forms (uint8, float64, float32), the VAE's full-resolution activations (3 live
        feature maps of its first block's width), its mid-block attention over the latent pixels, and
        one set of attention probabilities (batch 2 × heads × pixels²) at the UNet's finest attention
        level. Nothing is allocated.
        """
        W, H = size
        f, unet = self.vae_scale_factor, self.unet.config
        pixels, latent_pixels = W * H, (W // f) * (H // f)
        bytes_per = 2 if self.dtype in (torch.float16, torch.bfloat16) else 4
        photo = pixels * 3 * (1 + 8 + 4)
        vae = pixels * 3 * int(self.vae.config.block_out_channels[0]) * 4 + latent_pixels**2 * 4
        heads = unet.num_attention_heads or unet.attention_head_dim
        attention = 0
        for level, block in enumerate(unet.down_block_types):
            if "Attn" in block:
                n = latent_pixels // 4**level
                level_heads = heads[level] if isinstance(heads, (list, tuple)) else heads
                attention = max(attention, 2 * int(level_heads) * n * n * bytes_per)
        return int(photo + vae + attention)


def check_prompt_text(prompt) -> None:
    """Raise PromptError unless `prompt` is a string of valid Unicode (no undecodable bytes)."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    problem = utf8_problem(prompt)
    if problem:
        raise PromptError(f"the prompt is not valid UTF-8 ({problem}) — pass the caption as UTF-8 text")


def utf8_problem(text: str) -> str | None:
    """Where `text` cannot be written as UTF-8 ("byte 0xe9 at character 4": an undecodable byte kept as a
    surrogate escape; "U+D800 at character 1": a lone surrogate), or None if it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        return f"{byte} at character {e.start + 1}"
    return None


def available_memory(device: torch.device) -> int:
    """Bytes free for tensors on `device`: the GPU's free memory, else the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.strip()}
        return info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_device() -> torch.device:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _device(device: str | torch.device | None) -> torch.device:
    """The requested device, checked to exist, or the best available one."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r} — use cuda, mps or cpu") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(dev.type, False):
        raise ModelLoadError(f"device {device!r} is not available here — use --device cpu (or leave it out)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU; on GPUs fp16 unless asked otherwise. fp16 and bf16 both run on the CPU (slowly)."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype is None:
        resolved = torch.float32 if device.type == "cpu" else torch.float16
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ModelLoadError(f"unknown dtype {dtype!r} — use float32, float16 or bfloat16")
    return resolved


def weights_identity(*modules: torch.nn.Module, extra: dict | None = None) -> str:
    """A short, dtype- and device-independent hash of the weights.

    Hashes every tensor's name and shape and 64 values spread through it, rounded to float16, so
    that the same weights stored or loaded in fp32 or fp16, on any device, give the same identity
    while any fine-tune changes it. (Weights stored in bf16 are a different, rounded model.)
    """
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            flat = t.detach().flatten()
            idx = torch.linspace(0, flat.numel() - 1, min(64, flat.numel()), device=flat.device).long()
            values = flat[idx].float().to(torch.float16).view(torch.int16).cpu().numpy().tobytes()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(values)
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _ddim_config(config: dict) -> dict:
    """The model's scheduler config read as a DDIM config (what every SD pipeline does)."""
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler.from_config(config).config)


def load_model(source: str | Path | None = None, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, allow_pickle: bool = False,
               config: str | Path | None = None) -> Model:
    """Load an SD 1.x/2.x or SDXL model: "bundled", a hub id, a diffusers folder or one checkpoint file.

    A local folder or file never causes a network request. A hub id is read from the local Hugging
    Face cache first; only if it is not there is the hub asked, after a quick check that it can be
    reached. A single checkpoint file is converted by diffusers' `from_single_file`, with the
    component configs from `config` (a local diffusers folder of the same family, e.g. one
    `save_pretrained` wrote) or else from the local Hugging Face cache. A pickled .ckpt can run code
    when loaded and is refused unless `allow_pickle`. Models of other architectures are refused
    before their weights are read where their configs allow it. Every failure is one ModelLoadError line.
    """
    source = BUNDLED if source in (None, "", BUNDLED) else str(source)
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        with _quiet_loading():
            c = _load_components(source, allow_pickle, None if config is None else Path(config).expanduser())
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the loaders becomes one clear line
        raise ModelLoadError(
            f"cannot load model {source!r}: {first_line(e, 160)} — pass --model with a diffusers folder, "
            "a .safetensors file, or a hub id that is cached locally"
        ) from None
    unet, vae, text_encoder, text_encoder_2 = c["unet"], c["vae"], c["text_encoder"], c.get("text_encoder_2")
    tokenizer_2 = c.get("tokenizer_2")
    if tokenizer_2 is not None and tokenizer_2.model_max_length != c["tokenizer"].model_max_length:
        raise ModelLoadError(f"cannot load model {source!r}: its two tokenizers read {c['tokenizer'].model_max_length} "
                             f"and {tokenizer_2.model_max_length} tokens; SDXL's token features are joined position by "
                             "position — pass a model whose tokenizers agree")
    check_architecture(source, None, unet.config, vae.config, text_encoder.config if text_encoder else None,
                       text_encoder_2.config if text_encoder_2 is not None else None)
    encoders = [m for m in (text_encoder, text_encoder_2) if m is not None]
    for m in (unet, vae, *encoders):
        m.requires_grad_(False).eval()
    extra = {"prediction_type": c["scheduler_config"].get("prediction_type"), "vocab": len(c["tokenizer"]),
             "scaling_factor": float(vae.config.scaling_factor)}
    identity = weights_identity(unet, vae, *encoders, extra=extra)
    with _quiet_loading():
        unet.to(dev, dt)
        for m in encoders:
            m.to(dev, dt)
        # SD's and SDXL's VAEs overflow in fp16; their configs say so with force_upcast (diffusers' default)
        upcast = dt == torch.float16 and vae.config.get("force_upcast", True)
        vae.to(dev, torch.float32 if upcast else dt)
    return Model(unet, vae, text_encoder, c["tokenizer"], c["scheduler_config"], source, identity,
                 text_encoder_2, c.get("tokenizer_2"))



@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """diffusers', transformers' and huggingface_hub's log lines, bars and warnings are not ours to print."""
    import diffusers
    import transformers

    names = ("diffusers", "transformers", "huggingface_hub", "httpx")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    libs = [lib.utils.logging for lib in (diffusers, transformers)]
    bars = [lib.is_progress_bar_enabled() for lib in libs]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        for lib in libs:
            lib.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for lib, enabled in zip(libs, bars):
            if enabled:
                lib.enable_progress_bar()


def _get(config: Any, key: str, default: Any = None) -> Any:
    """A config value: diffusers' configs are dicts, transformers' objects."""
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def check_architecture(source: str, pipeline: str | None, unet: Any, vae: Any, text_encoder: Any,
                       text_encoder_2: Any = None) -> None:
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


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _check_folder(source: str, path: Path) -> dict:
    """Refuse a diffusers folder of another architecture from its configs, before any weights are read; its index."""
    index = _read_json(path / "model_index.json")
    if index is None:
        raise ModelLoadError(f"cannot load model {source!r}: the folder has no readable model_index.json — pass a "
                             "diffusers folder (as written by save_pretrained), a .safetensors file or a hub id")
    if "transformer" in index and "unet" not in index:
        pipeline = str(index.get("_class_name"))
        raise ModelLoadError(f"cannot load model {source!r}: it is a {pipeline}, a diffusion transformer (no UNet) — "
                             f"{SUPPORTED_TEXT}")
    configs = {name: _read_json(path / name / "config.json") for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    check_architecture(source, str(index.get("_class_name")), *configs.values())
    return index


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub's host: no retries, no log lines."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _no_network() -> Iterator[None]:
    """huggingface_hub offline for a local load: `local_files_only` alone still lets it fetch its own
    metadata (e.g. an agent registry when building request headers)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")  # read now, not at import


def _load_components(source: str, allow_pickle: bool = False, config: Path | None = None) -> dict:
    path = bundled_model_path() if source == BUNDLED else Path(source).expanduser()
    if source == BUNDLED and not (path / "model_index.json").exists():
        raise ModelLoadError(f"the bundled model is missing at {path} — reinstall nulltext or train it with "
                             "`python -m nulltext.bundled.train`")
    if path.is_file():
        with _no_network():
            return _load_single_file(source, path, allow_pickle, config)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"cannot load model {source!r}: not a folder or a checkpoint file — pass a diffusers "
                             "folder or a .safetensors checkpoint")
    if path.is_dir():
        _check_folder(source, path)
        with _no_network():
            return _from_pretrained(str(path), local_files_only=True, scheduler_file=path / "scheduler" / "scheduler_config.json")
    if source.startswith((".", "/", "~")) or source.count("/") != 1 or Path(source).suffix in (".safetensors", ".ckpt"):
        raise ModelLoadError(f"cannot load model {source!r}: no such folder or file — pass a diffusers folder, a "
                             ".safetensors file or a hub id (owner/name)")
    try:  # a hub id: the local cache first, never the network for what is there
        with _no_network():
            return _from_pretrained(source, local_files_only=True)
    except ModelLoadError:
        raise
    except Exception:  # noqa: BLE001 - not (completely) cached
        if _offline():
            raise ModelLoadError(f"cannot load model {source!r}: it is not in the local Hugging Face cache and "
                                 "HF_HUB_OFFLINE is set — download it once online, or pass a local folder") from None
    if not _hub_reachable():
        raise ModelLoadError(f"cannot load model {source!r}: it is not in the local Hugging Face cache and the hub "
                             "cannot be reached (no network?) — connect once to download it, or pass a local folder")
    return _from_pretrained(source, local_files_only=False)


def _from_pretrained(where: str, local_files_only: bool, scheduler_file: Path | None = None) -> dict:
    """The components of a diffusers pipeline folder or hub id (SD 1.x/2.x, or SDXL's two encoders)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    kw = {"local_files_only": local_files_only}
    index = DiffusionPipeline.load_config(where, **kw)
    sdxl = bool(index.get("text_encoder_2")) and index["text_encoder_2"][0] is not None
    if scheduler_file is None:  # a hub id: its configs say what it is before any weights come
        configs = [UNet2DConditionModel.load_config(where, subfolder="unet", **kw),
                   AutoencoderKL.load_config(where, subfolder="vae", **kw)]
        configs += [CLIPTextConfig.from_pretrained(where, subfolder=name, **kw)
                    if index.get(name) and index[name][0] is not None else None
                    for name in ("text_encoder", "text_encoder_2")]
        check_architecture(where, str(index.get("_class_name")), *configs)
    c = {"unet": UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kw),
         "vae": AutoencoderKL.from_pretrained(where, subfolder="vae", **kw),
         "text_encoder": CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kw),
         "tokenizer": CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw)}
    if sdxl:
        c["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(where, subfolder="text_encoder_2", **kw)
        c["tokenizer_2"] = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer_2", **kw)
    if scheduler_file is not None:
        scheduler_config = json.loads(scheduler_file.read_text())
    else:
        scheduler_config = dict(DDIMScheduler.from_pretrained(where, subfolder="scheduler", **kw).config)
    c["scheduler_config"] = _ddim_config(scheduler_config)
    return c


# tensor-name prefixes of an original-format (CompVis/Stability) checkpoint: SD 1.x/2.x, and SDXL's two encoders
_SD_PREFIXES = ("model.diffusion_model.input_blocks.", "first_stage_model.", "cond_stage_model.")
_SDXL_PREFIXES = ("model.diffusion_model.input_blocks.", "first_stage_model.", "conditioner.embedders.")


def _load_single_file(source: str, path: Path, allow_pickle: bool, config: Path | None = None) -> dict:
    """One .safetensors (or, allowed by name, a pickled .ckpt) checkpoint via diffusers' from_single_file.

    Never reaches the network: the component configs come from `config`, a local diffusers folder of
    the checkpoint's family and size, or else from the local Hugging Face cache.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if path.suffix not in (".safetensors", ".ckpt"):
        raise ModelLoadError(f"cannot load model {source!r}: a single-file model must be .safetensors or .ckpt — "
                             "pass a diffusers folder or a .safetensors checkpoint")
    if path.suffix == ".ckpt" and not allow_pickle:
        raise ModelLoadError(f"cannot load model {source!r}: a .ckpt is a pickle, which can run code when loaded — "
                             "convert it to .safetensors, or pass --allow-pickle if you trust its source")
    sdxl = _check_checkpoint_keys(source, path) if path.suffix == ".safetensors" else None
    index = None
    if config is not None:
        if not config.is_dir():
            raise ModelLoadError(f"cannot load model {source!r}: its config {str(config)!r} is not a folder — pass a "
                                 "diffusers folder of the same model family (as save_pretrained writes it)")
        index = _check_folder(str(config), config)
        folder_sdxl = bool(index.get("text_encoder_2")) and index["text_encoder_2"][0] is not None
        if sdxl is not None and sdxl != folder_sdxl:
            raise ModelLoadError(f"cannot load model {source!r}: it is an {'SDXL' if sdxl else 'SD 1.x/2.x'} checkpoint "
                                 f"but its config {str(config)!r} is for {'SDXL' if folder_sdxl else 'SD 1.x/2.x'} — "
                                 "pass a config folder of the checkpoint's family")
        sdxl = folder_sdxl
    pipeline = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    family = "an SDXL" if sdxl else "a Stable Diffusion 1.x/2.x"
    kwargs = {} if sdxl else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        pipe = pipeline.from_single_file(str(path), local_files_only=True,
                                         config=None if config is None else str(config), **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model {source!r} as {family} checkpoint: "
                             f"{first_line(e, 120)} — pass --model-config with a local diffusers folder of "
                             "this model family (or have its configs in the Hugging Face cache)") from None
    c = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
         "scheduler_config": _ddim_config(dict(pipe.scheduler.config))}
    if sdxl:
        c.update(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)
    return c


def _check_checkpoint_keys(source: str, path: Path) -> bool:
    """Refuse a .safetensors file that is not an original-format SD 1.x/2.x or SDXL checkpoint; True for SDXL."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise ModelLoadError(f"cannot load model {source!r}: not a readable .safetensors file "
                             f"({first_line(e, 80)}) — pass a Stable Diffusion checkpoint") from None
    for prefixes, sdxl in ((_SD_PREFIXES, False), (_SDXL_PREFIXES, True)):
        if all(any(k.startswith(p) for k in keys) for p in prefixes):
            return sdxl
    missing = [p for p in _SD_PREFIXES if not any(k.startswith(p) for k in keys)]
    if any(k.startswith(("model.diffusion_model.joint_blocks.", "double_blocks.", "transformer_blocks.")) for k in keys):
        found = "a transformer (SD3/Flux-like) checkpoint"
    else:
        found = f"not a Stable Diffusion checkpoint ({len(keys)} tensors, e.g. {short(keys[0], 40)!r}" \
                if keys else "not a Stable Diffusion checkpoint (no tensors"
        found += f"; none named {missing[0]}*)"
    raise ModelLoadError(f"cannot load model {source!r}: it is {found} — {SUPPORTED_TEXT}")

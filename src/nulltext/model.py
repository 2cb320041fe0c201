"""Loading a Stable Diffusion model, and what the rest of nulltext asks of it.

`load_model(source)` takes the bundled model (default), a hub id, a local diffusers folder, or a
single .safetensors/.ckpt checkpoint, and returns a `Model`: the UNet, VAE, text encoder, tokenizer
and a DDIM scheduler built from the model's own scheduler config, on one device and dtype, with a
stable identity of the weights. Sizes, the VAE scaling factor and the prediction type come from the
model's configs, never from constants.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BUNDLED = "bundled"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message is one line naming the source and the fix."""


class PromptError(ValueError):
    """An empty or over-long prompt; one line naming the prompt and the fix."""


def bundled_model_path() -> Path:
    return Path(__file__).parent / "bundled" / "model"


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

    # -- text -----------------------------------------------------------------------------------

    def check_prompt(self, prompt: str, allow_empty: bool = False) -> None:
        """Raise PromptError for an empty or over-long prompt."""
        if not prompt.strip() and not allow_empty:
            raise PromptError("the prompt is empty — describe the photo, e.g. --prompt \"a cat sitting next to a mirror\"")
        n = len(self.tokenizer(prompt).input_ids)
        if n > self.max_tokens:
            raise PromptError(
                f"prompt {_short(prompt)!r} is {n} tokens long; this model reads at most {self.max_tokens} "
                "(start and end included) — shorten it"
            )

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (batch, tokens, dim) in the model's dtype; "" gives ψ("")."""
        for p in prompts:
            self.check_prompt(p, allow_empty=True)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def predict(self, latents: torch.Tensor, timestep: int, embeddings: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (ε, v or x0 by the scheduler's prediction type), as float32."""
        t = torch.tensor(timestep, device=self.device)
        out = self.unet(latents.to(self.dtype), t, encoder_hidden_states=embeddings.to(self.dtype)).sample
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
        """Raise ValueError unless (width, height) fits the model's downsampling."""
        m = self.size_multiple
        if size[0] % m or size[1] % m or min(size) <= 0:
            raise ValueError(f"image size {size[0]}x{size[1]} is not a multiple of {m} for this model — use e.g. "
                             f"--size {self.default_size[0]}x{self.default_size[1]}")


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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
    """fp32 on CPU; on GPUs fp16 unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype is None:
        resolved = torch.float32 if device.type == "cpu" else torch.float16
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ModelLoadError(f"unknown dtype {dtype!r} — use float32, float16 or bfloat16")
    if device.type == "cpu" and resolved == torch.float16:
        raise ModelLoadError("float16 is not supported on the CPU — use --dtype float32 (or bfloat16)")
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
               dtype: str | torch.dtype | None = None) -> Model:
    """Load a Stable Diffusion 1.x/2.x model: "bundled", a hub id, a diffusers folder or one checkpoint file."""
    source = BUNDLED if source in (None, "", BUNDLED) else str(source)
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        components = _load_components(source)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the loaders becomes one clear line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot load model {source!r}: {_short(reason, 160)} — pass --model with a diffusers folder, "
            "a .safetensors file, or a hub id that is cached locally"
        ) from None
    unet, vae, text_encoder, tokenizer, scheduler_config = components
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval()
    identity = weights_identity(unet, vae, text_encoder, extra={
        "prediction_type": scheduler_config.get("prediction_type"),
        "vocab": len(tokenizer),
        "scaling_factor": float(vae.config.scaling_factor),
    })
    unet.to(dev, dt)
    text_encoder.to(dev, dt)
    vae.to(dev, dt if dt != torch.float16 else torch.float32)  # SD's VAE overflows in fp16
    return Model(unet, vae, text_encoder, tokenizer, scheduler_config, source, identity)


def _load_components(source: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = bundled_model_path() if source == BUNDLED else Path(source).expanduser()
    if source == BUNDLED and not (path / "model_index.json").exists():
        raise ModelLoadError(f"the bundled model is missing at {path} — reinstall nulltext or train it with "
                             "`python -m nulltext.bundled.train`")
    if path.is_file():
        return _load_single_file(path)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"cannot load model {source!r}: not a folder or a checkpoint file — pass a diffusers "
                             "folder or a .safetensors checkpoint")
    if source != BUNDLED and not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise ModelLoadError(f"cannot load model {source!r}: no such folder or file — pass a diffusers folder, a "
                             ".safetensors file or a hub id (owner/name)")
    where = str(path) if path.exists() else source
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")  # read now, not at import
    kw = {"local_files_only": True} if offline else {}
    unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(where, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw)
    if path.exists():
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    else:
        from diffusers import DDIMScheduler

        scheduler_config = dict(DDIMScheduler.from_pretrained(where, subfolder="scheduler", **kw).config)
    return unet, vae, text_encoder, tokenizer, _ddim_config(scheduler_config)


def _load_single_file(path: Path):
    """One .safetensors (or, asked for by name, a pickled .ckpt) checkpoint via diffusers' from_single_file."""
    from diffusers import StableDiffusionPipeline

    if path.suffix not in (".safetensors", ".ckpt"):
        raise ModelLoadError(f"cannot load model '{path}': a single-file model must be .safetensors or .ckpt — "
                             "pass a diffusers folder or a .safetensors checkpoint")
    pipe = StableDiffusionPipeline.from_single_file(str(path), load_safety_checker=False)
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, _ddim_config(dict(pipe.scheduler.config))

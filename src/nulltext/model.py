"""Loading a Stable Diffusion model, and what the rest of nulltext asks of it.

`load_model(source)` takes the bundled model (default), a hub id, a local diffusers folder, or a
single .safetensors/.ckpt checkpoint, and returns a `Model`: the UNet, VAE, text encoder, tokenizer
and a DDIM scheduler built from the model's own scheduler config, on one device and dtype, with a
stable identity of the weights. Sizes, the VAE scaling factor and the prediction type come from the
model's configs, never from constants.
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

BUNDLED = "bundled"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message is one line naming the source and the fix."""


class PromptError(ValueError):
    """An empty, over-long or non-UTF-8 prompt; one line naming the prompt and the fix."""


class SizeError(ValueError):
    """An image size the model cannot use or the machine cannot hold; one line with the size and the fix."""


# Pipelines whose components nulltext drives, by the `_class_name` of their model_index.json: one
# UNet2DConditionModel on the VAE's latents, one CLIP text encoder. To support a family, add it here
# and give `Model` what differs (DESIGN.md: "Model families").
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "Stable Diffusion 1.x/2.x",
    "StableDiffusionImg2ImgPipeline": "Stable Diffusion 1.x/2.x",
}
# Known pipelines that are not supported, and what they are, for a clearer refusal.
UNSUPPORTED_PIPELINES = {
    "StableDiffusionXLPipeline": "SDXL (two text encoders)", "StableDiffusionXLImg2ImgPipeline": "SDXL",
    "StableDiffusion3Pipeline": "Stable Diffusion 3 (a transformer, no UNet)", "FluxPipeline": "Flux (a transformer)",
    "StableDiffusionInpaintPipeline": "an inpainting model (9-channel UNet)",
    "StableDiffusionDepth2ImgPipeline": "a depth-conditioned model", "StableDiffusionUpscalePipeline": "an upscaler",
    "PixArtAlphaPipeline": "PixArt (a transformer)", "KandinskyV22Pipeline": "Kandinsky",
}
SUPPORTED_TEXT = "nulltext supports " + ", ".join(sorted(set(SUPPORTED_PIPELINES.values()))) + \
    " (" + ", ".join(SUPPORTED_PIPELINES) + ")"


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
        """Raise PromptError for an empty, over-long or non-UTF-8 prompt."""
        check_prompt_text(prompt)
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
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = prompt[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise PromptError(f"the prompt is not valid UTF-8 ({byte} at character {e.start + 1}) — "
                          "pass the caption as UTF-8 text") from None


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
               dtype: str | torch.dtype | None = None, allow_pickle: bool = False) -> Model:
    """Load a Stable Diffusion 1.x/2.x model: "bundled", a hub id, a diffusers folder or one checkpoint file.

    A local folder or file never causes a network request. A hub id is read from the local Hugging
    Face cache first; only if it is not there is the hub asked, after a quick check that it can be
    reached. A pickled .ckpt can run code when loaded and is refused unless `allow_pickle`. Models of
    other architectures are refused before their weights are read where their configs allow it.
    Every failure is one ModelLoadError line.
    """
    source = BUNDLED if source in (None, "", BUNDLED) else str(source)
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        with _quiet_loading():
            components = _load_components(source, allow_pickle)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the loaders becomes one clear line
        raise ModelLoadError(
            f"cannot load model {source!r}: {_short(_first_line(e), 160)} — pass --model with a diffusers folder, "
            "a .safetensors file, or a hub id that is cached locally"
        ) from None
    unet, vae, text_encoder, tokenizer, scheduler_config = components
    check_architecture(source, None, unet.config, vae.config, text_encoder.config if text_encoder else None)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval()
    identity = weights_identity(unet, vae, text_encoder, extra={
        "prediction_type": scheduler_config.get("prediction_type"),
        "vocab": len(tokenizer),
        "scaling_factor": float(vae.config.scaling_factor),
    })
    with _quiet_loading():
        unet.to(dev, dt)
        text_encoder.to(dev, dt)
        vae.to(dev, dt if dt != torch.float16 else torch.float32)  # SD's VAE overflows in fp16
    return Model(unet, vae, text_encoder, tokenizer, scheduler_config, source, identity)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(e).__name__


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


def check_architecture(source: str, pipeline: str | None, unet: Any, vae: Any, text_encoder: Any) -> None:
    """Raise ModelLoadError unless the configs describe a model nulltext can drive (SUPPORTED_PIPELINES)."""
    def refuse(found: str) -> None:
        raise ModelLoadError(f"cannot load model {source!r}: it is {found} — {SUPPORTED_TEXT}")

    if pipeline is not None and pipeline not in SUPPORTED_PIPELINES:
        refuse(f"a {pipeline}" + (f", {UNSUPPORTED_PIPELINES[pipeline]}" if pipeline in UNSUPPORTED_PIPELINES else ""))
    if unet is None or vae is None:
        refuse("missing its " + ("UNet" if unet is None else "VAE"))
    if text_encoder is None:
        refuse("a model without a text encoder")
    def get(config: Any, key: str, default: Any = None) -> Any:  # diffusers' configs are dicts, transformers' objects
        return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)

    latent, c_in, c_out = get(vae, "latent_channels", 4), get(unet, "in_channels"), get(unet, "out_channels")
    if c_in != latent or c_out != latent:
        refuse(f"a model whose UNet takes {c_in} and gives {c_out} channels while its VAE makes {latent} "
               "(an inpainting or depth model?)")
    if get(unet, "addition_embed_type") is not None or get(unet, "class_embed_type") is not None:
        refuse(f"a model with extra UNet conditioning ({get(unet, 'addition_embed_type') or get(unet, 'class_embed_type')}, "
               "e.g. SDXL or an upscaler)")
    hidden = get(text_encoder, "hidden_size")
    if get(unet, "cross_attention_dim") != hidden:
        refuse(f"a model whose UNet attends to {get(unet, 'cross_attention_dim')}-wide text features while its text "
               f"encoder gives {hidden}")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _check_folder(source: str, path: Path) -> None:
    """Refuse a diffusers folder of another architecture from its configs, before any weights are read."""
    index = _read_json(path / "model_index.json")
    if index is None:
        raise ModelLoadError(f"cannot load model {source!r}: the folder has no readable model_index.json — pass a "
                             "diffusers folder (as written by save_pretrained), a .safetensors file or a hub id")
    configs = {name: _read_json(path / name / "config.json") for name in ("unet", "vae", "text_encoder")}
    check_architecture(source, str(index.get("_class_name")), *configs.values())


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


def _load_components(source: str, allow_pickle: bool = False):
    path = bundled_model_path() if source == BUNDLED else Path(source).expanduser()
    if source == BUNDLED and not (path / "model_index.json").exists():
        raise ModelLoadError(f"the bundled model is missing at {path} — reinstall nulltext or train it with "
                             "`python -m nulltext.bundled.train`")
    if path.is_file():
        with _no_network():
            return _load_single_file(source, path, allow_pickle)
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


def _from_pretrained(where: str, local_files_only: bool, scheduler_file: Path | None = None):
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": local_files_only}
    if scheduler_file is None:  # a hub id: its model_index.json says what it is before any weights come
        index = DiffusionPipeline.load_config(where, **kw)
        configs = {name: UNet2DConditionModel.load_config(where, subfolder=name, **kw) if name == "unet"
                   else AutoencoderKL.load_config(where, subfolder=name, **kw) if name == "vae" else None
                   for name in ("unet", "vae")}
        check_architecture(where, str(index.get("_class_name")), configs["unet"], configs["vae"],
                           {"hidden_size": configs["unet"].get("cross_attention_dim")} if "text_encoder" in index else None)
    unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(where, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw)
    if scheduler_file is not None:
        scheduler_config = json.loads(scheduler_file.read_text())
    else:
        scheduler_config = dict(DDIMScheduler.from_pretrained(where, subfolder="scheduler", **kw).config)
    return unet, vae, text_encoder, tokenizer, _ddim_config(scheduler_config)


# tensor-name prefixes of an original-format (CompVis/Stability) Stable Diffusion 1.x/2.x checkpoint
_SD_PREFIXES = ("model.diffusion_model.input_blocks.", "first_stage_model.", "cond_stage_model.")


def _load_single_file(source: str, path: Path, allow_pickle: bool):
    """One .safetensors (or, allowed by name, a pickled .ckpt) checkpoint via diffusers' from_single_file.

    Never reaches the network: diffusers' configs for the checkpoint's family must be in the local cache.
    """
    from diffusers import StableDiffusionPipeline

    if path.suffix not in (".safetensors", ".ckpt"):
        raise ModelLoadError(f"cannot load model {source!r}: a single-file model must be .safetensors or .ckpt — "
                             "pass a diffusers folder or a .safetensors checkpoint")
    if path.suffix == ".ckpt" and not allow_pickle:
        raise ModelLoadError(f"cannot load model {source!r}: a .ckpt is a pickle, which can run code when loaded — "
                             "convert it to .safetensors, or pass --allow-pickle if you trust its source")
    if path.suffix == ".safetensors":
        _check_checkpoint_keys(source, path)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), load_safety_checker=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model {source!r} as a Stable Diffusion 1.x/2.x checkpoint: "
                             f"{_short(_first_line(e), 120)} — diffusers needs that family's configs in the local "
                             "Hugging Face cache; or pass a diffusers folder") from None
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, _ddim_config(dict(pipe.scheduler.config))


def _check_checkpoint_keys(source: str, path: Path) -> None:
    """Refuse a .safetensors file that is not an original-format SD 1.x/2.x checkpoint, from its tensor names."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise ModelLoadError(f"cannot load model {source!r}: not a readable .safetensors file "
                             f"({_short(_first_line(e), 80)}) — pass a Stable Diffusion checkpoint") from None
    missing = [p for p in _SD_PREFIXES if not any(k.startswith(p) for k in keys)]
    if not missing:
        return
    if any(k.startswith("conditioner.embedders.") for k in keys):
        found = "an SDXL checkpoint"
    elif any(k.startswith(("model.diffusion_model.joint_blocks.", "double_blocks.", "transformer_blocks.")) for k in keys):
        found = "a transformer (SD3/Flux-like) checkpoint"
    else:
        found = f"not a Stable Diffusion checkpoint ({len(keys)} tensors, e.g. {_short(keys[0], 40)!r}" \
                if keys else "not a Stable Diffusion checkpoint (no tensors"
        found += f"; none named {missing[0]}*)"
    raise ModelLoadError(f"cannot load model {source!r}: it is {found} — {SUPPORTED_TEXT}")

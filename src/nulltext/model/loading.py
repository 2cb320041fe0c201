"""Loading a model: the bundled one, a hub id (cache first), a diffusers folder or a single checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nulltext.errors import first_line
from nulltext.model.compute import Model
from nulltext.model.device import resolve_device, resolve_dtype
from nulltext.model.errors import ModelLoadError
from nulltext.model.lora import LoRA, check_loras, fuse_loras, identity_entries
from nulltext.model.refusals import (FAMILY_NAMES, check_architecture, check_checkpoint_keys, check_folder,
                                     checkpoint_keys, index_family)

BUNDLED = "bundled"


def bundled_model_path() -> Path:
    return Path(__file__).parents[1] / "bundled" / "model"


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


_PARTS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


def _components(pipe) -> dict:
    """What nulltext uses of a diffusers SD 1.x/2.x, SDXL or SD 3.x pipeline: the denoiser (UNet or transformer)
    as "unet", the VAE, the encoders and tokenizers (None where the family has none) and the scheduler config."""
    c = {k: getattr(pipe, k, None) for k in _PARTS}
    unet = getattr(pipe, "unet", None)
    c["unet"] = unet if unet is not None else getattr(pipe, "transformer", None)
    scheduler = getattr(pipe, "scheduler", None)
    c["scheduler_config"] = None if scheduler is None else _scheduler_config(dict(scheduler.config))
    return c


def _scheduler_config(config: dict) -> dict:
    """The model's scheduler config as nulltext samples with it: read as a DDIM config (what every SD 1.x/2.x
    and SDXL pipeline does), or SD 3.x's flow-matching config with its defaults filled in."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from nulltext.core.schedule import is_flow_config

    if is_flow_config(config):
        return dict(FlowMatchEulerDiscreteScheduler.from_config(config).config)
    return dict(DDIMScheduler.from_config(config).config)


def load_model(source=None, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, allow_pickle: bool = False,
               config: str | Path | None = None, loras: Sequence = ()) -> Model:
    """Load an SD 1.x/2.x, SDXL or SD 3.x model: "bundled", a hub id, a diffusers folder, one checkpoint file, or
    a diffusers pipeline already loaded (`from_pipeline`).

    A local folder or file never causes a network request. A hub id is read from the local Hugging
    Face cache first; only if it is not there is the hub asked, after a quick check that it can be
    reached. A single checkpoint file is converted by diffusers' `from_single_file`, with the
    component configs from `config` (a local diffusers folder of the same family, e.g. one
    `save_pretrained` wrote) or else from the local Hugging Face cache. A pickled .ckpt can run code
    when loaded and is refused unless `allow_pickle`. Models of other architectures are refused
    before their weights are read where their configs allow it. `loras`: LoRA files ("FILE[:SCALE]", a
    path, (path, scale) or `LoRA`) fused into the weights in order (`nulltext.model.lora`). Every failure
    is one ModelLoadError line.
    """
    if hasattr(source, "components") and (hasattr(source, "unet") or hasattr(source, "transformer")):  # a pipeline
        if loras:
            raise ModelLoadError("LoRAs for a loaded pipeline go into the pipeline: pipe.load_lora_weights(FILE), "
                                 "pipe.fuse_lora(), then load_model(pipe)")
        return from_pipeline(source, device, dtype)
    source = BUNDLED if source in (None, "", BUNDLED) else str(source)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    loras = [LoRA.parse(x) for x in loras]
    check_loras(loras)
    try:
        with _quiet_loading():
            c = _load_components(source, allow_pickle, None if config is None else Path(config).expanduser())
            fuse_loras(c, loras)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the loaders becomes one clear line
        raise ModelLoadError(
            f"cannot load model {source!r}: {first_line(e, 160)} — pass --model with a diffusers folder, "
            "a .safetensors file, or a hub id that is cached locally"
        ) from None
    return _model(c, source, dev, dt, loras)


def from_pipeline(pipe, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Model:
    """A Model sharing the modules of a loaded `StableDiffusionPipeline`, `StableDiffusionXLPipeline` or `StableDiffusion3Pipeline`
    (their device, dtype, LoRAs and scheduler config): nothing is copied or reloaded. Like every Model
    it puts the modules in eval mode with frozen weights (inversion optimises embeddings only), and in
    fp16 it runs the VAE in fp32 where its config asks (`force_upcast`), as the pipelines do to decode.
    `device` and `dtype`, if given, must be the pipeline's: move the pipeline with `pipe.to(...)`."""
    name = type(pipe).__name__
    c = _components(pipe)
    parts = {"UNet or transformer": c["unet"], "vae": c["vae"], "text_encoder": c["text_encoder"],
             "tokenizer": c["tokenizer"], "scheduler": c["scheduler_config"]}
    missing = [k for k, v in parts.items() if v is None]
    if missing:
        raise ModelLoadError(f"the {name} has no {missing[0]} — pass a StableDiffusionPipeline, "
                             "StableDiffusionXLPipeline or StableDiffusion3Pipeline with all its components")
    dev, dt = c["unet"].device, c["unet"].dtype
    if (device is not None and resolve_device(device) != dev) or (dtype is not None and resolve_dtype(dtype, dev) != dt):
        raise ModelLoadError(f"the pipeline is on {dev} in {str(dt).removeprefix('torch.')}, not on the device and "
                             "dtype asked for — move it with pipe.to(...), or leave device and dtype unset")
    check_architecture(name, name, c["unet"].config, c["vae"].config, c["text_encoder"].config,
                       getattr(c["text_encoder_2"], "config", None), getattr(c["text_encoder_3"], "config", None))
    return _model(c, f"pipeline {name}", dev, dt)


def _model(c: dict, source: str, dev: torch.device, dt: torch.dtype, loras: Sequence[LoRA] = ()) -> Model:
    """The Model of loaded components on `dev` in `dt` (modules already there are not copied)."""
    unet, vae, text_encoder, text_encoder_2 = c["unet"], c["vae"], c["text_encoder"], c.get("text_encoder_2")
    text_encoder_3 = c.get("text_encoder_3")
    tokenizer_2 = c.get("tokenizer_2")
    if tokenizer_2 is not None and tokenizer_2.model_max_length != c["tokenizer"].model_max_length:
        raise ModelLoadError(f"cannot load model {source!r}: its two tokenizers read {c['tokenizer'].model_max_length} "
                             f"and {tokenizer_2.model_max_length} tokens; its encoders' token features are joined position by "
                             "position — pass a model whose tokenizers agree")
    check_architecture(source, None, unet.config, vae.config, text_encoder.config if text_encoder else None,
                       text_encoder_2.config if text_encoder_2 is not None else None,
                       text_encoder_3.config if text_encoder_3 is not None else None)
    encoders = [m for m in (text_encoder, text_encoder_2, text_encoder_3) if m is not None]
    for m in (unet, vae, *encoders):
        m.requires_grad_(False).eval()
    extra = {"prediction_type": c["scheduler_config"].get("prediction_type"), "vocab": len(c["tokenizer"]),
             "scaling_factor": float(vae.config.scaling_factor)}
    if loras:
        extra["loras"] = identity_entries(list(loras))
    identity = weights_identity(unet, vae, *encoders, extra=extra)
    with _quiet_loading():
        unet.to(dev, dt)
        for m in encoders:
            m.to(dev, dt)
        # SD's and SDXL's VAEs overflow in fp16; their configs say so with force_upcast (diffusers' default)
        upcast = dt == torch.float16 and vae.config.get("force_upcast", True)
        vae.to(dev, torch.float32 if upcast else dt)
    return Model(unet, vae, text_encoder, c["tokenizer"], c["scheduler_config"], source, identity,
                 text_encoder_2, c.get("tokenizer_2"), tuple(f"{lora.path.name}:{lora.scale:g}" for lora in loras),
                 text_encoder_3, c.get("tokenizer_3"))



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
        check_folder(source, path)
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
    if "transformer" in index:
        return _sd3_from_pretrained(where, index, kw, check=scheduler_file is None)
    sdxl = index_family(index) == "sdxl"
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
    c["scheduler_config"] = _scheduler_config(scheduler_config)
    return c


def _sd3_from_pretrained(where: str, index: dict, kw: dict, check: bool) -> dict:
    """An SD 3.x folder or hub id: its configs checked first (a hub id's, before any weights come), then
    diffusers' StableDiffusion3Pipeline loads the components its model_index.json names (T5 optional)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import AutoConfig

    if check:
        configs = [SD3Transformer2DModel.load_config(where, subfolder="transformer", **kw),
                   AutoencoderKL.load_config(where, subfolder="vae", **kw)]
        configs += [AutoConfig.from_pretrained(where, subfolder=name, **kw).to_dict()
                    if index.get(name) and index[name][0] is not None else None
                    for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
        check_architecture(where, str(index.get("_class_name")), *configs)
    absent = {name: None for name, entry in index.items()  # e.g. T5 left out: the pipeline takes None for it
              if not name.startswith("_") and isinstance(entry, list) and entry and entry[0] is None}
    return _components(StableDiffusion3Pipeline.from_pretrained(where, **kw, **absent))


def _load_single_file(source: str, path: Path, allow_pickle: bool, config: Path | None = None) -> dict:
    """One .safetensors (or, allowed by name, a pickled .ckpt) checkpoint via diffusers' from_single_file.

    Never reaches the network: the component configs come from `config`, a local diffusers folder of
    the checkpoint's family and size, or else from the local Hugging Face cache.
    """
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if path.suffix not in (".safetensors", ".ckpt"):
        raise ModelLoadError(f"cannot load model {source!r}: a single-file model must be .safetensors or .ckpt — "
                             "pass a diffusers folder or a .safetensors checkpoint")
    if path.suffix == ".ckpt" and not allow_pickle:
        raise ModelLoadError(f"cannot load model {source!r}: a .ckpt is a pickle, which can run code when loaded — "
                             "convert it to .safetensors, or pass --allow-pickle if you trust its source")
    keys = checkpoint_keys(source, path) if path.suffix == ".safetensors" else None
    family = None if keys is None else check_checkpoint_keys(source, keys)
    index = None
    if config is not None:
        if not config.is_dir():
            raise ModelLoadError(f"cannot load model {source!r}: its config {str(config)!r} is not a folder — pass a "
                                 "diffusers folder of the same model family (as save_pretrained writes it)")
        index = check_folder(str(config), config)
        folder = index_family(index)
        if family is not None and family != folder:
            raise ModelLoadError(f"cannot load model {source!r}: it is an {FAMILY_NAMES[family]} checkpoint but its "
                                 f"config {str(config)!r} is for {FAMILY_NAMES[folder]} — pass a config folder of the "
                                 "checkpoint's family")
        family = folder
    family = family or "sd"
    pipeline = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline}[family]
    kwargs = {"sd": {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
              "sdxl": {}, "sd3": {} if config is None else _encoders_not_in(keys or [], config, index)}[family]
    try:
        pipe = pipeline.from_single_file(str(path), local_files_only=True,
                                         config=None if config is None else str(config), **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model {source!r} as an {FAMILY_NAMES[family]} checkpoint: "
                             f"{first_line(e, 120)} — pass --model-config with a local diffusers folder of "
                             "this model family (or have its configs in the Hugging Face cache)") from None
    return _components(pipe)


# where an SD 3.x single file keeps each text encoder, if it has it
_SD3_ENCODERS = {"text_encoder": "text_encoders.clip_l.", "text_encoder_2": "text_encoders.clip_g.",
                 "text_encoder_3": "text_encoders.t5xxl."}


def _encoders_not_in(keys: list[str], config: Path, index: dict) -> dict:
    """The SD 3.x text encoders a single file leaves out, from the config folder (T5 None if it has none):
    diffusers' `from_single_file` takes them as arguments."""
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    out = {}
    for name, prefix in _SD3_ENCODERS.items():
        if any(k.startswith(prefix) for k in keys):
            continue
        if not (index.get(name) and index[name][0] is not None):
            out[name] = None
            continue
        cls = T5EncoderModel if name == "text_encoder_3" else CLIPTextModelWithProjection
        out[name] = cls.from_pretrained(str(config), subfolder=name, local_files_only=True)
    return out

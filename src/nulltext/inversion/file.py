"""The inversion file: one .safetensors file, tensors plus a JSON header.

Tensors: `latent_T` (1,C,h,w), `null_embeddings` (T,tokens,dim), optionally `pivot` (T+1,C,h,w),
`photo` (H,W,3) uint8, for direct inversion `corrections` (T,C,h,w), and for SDXL `null_pooled` (T,P),
the pooled part of ∅_t that SDXL's pipeline takes as `negative_pooled_prompt_embeds` (its size
micro-conditioning follows from the image size in the header). The header metadata holds
namespaced keys `nulltext.format` = "nulltext-inversion", `nulltext.format_version` and
`nulltext.header` = JSON of everything else (prompt, settings, scheduler config, sizes, crop, model
source and identity, per-step losses and iterations, wall time, nulltext version), and `format` = "pt",
the framework tag Hugging Face tools read. Files of nulltext 0.1.0, which used the plain keys
`format`, `format_version` and `nulltext`, are still read. The header's fields are read and checked in
`header` (no torch: `nulltext info` reads nothing else).

Writes are atomic and exclusive (`outputs.publish`): an interrupted run never leaves a half-written
file and never destroys the previous one. Loading checks the format, the version, every header
field's type and range, every tensor's dtype, shape and values against the header, the schedule
diffusers makes of the scheduler config, and — given a model — that it is the model the file was
made with and that the latent, image size and embeddings fit it; all before anything is sampled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nulltext import __version__
from nulltext.core.schedule import ScheduleError, make_schedule
from nulltext.inversion.null_text import Inversion, InversionConfig
from nulltext.model import Model
from nulltext.io.outputs import publish
from nulltext.errors import first_line
from nulltext.inversion.header import (FORMAT, FORMAT_VERSION, REINVERT, TENSORS,
                                       InversionFileError, check_format, is_text, parse_header,
                                       shape_problem)


def save_inversion(inversion: Inversion, path: str | Path, force: bool = True, keep_both: bool = False) -> Path:
    """Write the inversion to one .safetensors file, atomically; checked first, so a file that saves also loads."""
    path = Path(path)
    check_inversion(inversion)
    tensors = {name: getattr(inversion, name) for name in TENSORS if getattr(inversion, name) is not None}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    header = {
        "prompt": inversion.prompt,
        "config": dataclasses.asdict(inversion.config),
        "scheduler_config": _jsonable(inversion.scheduler_config),
        "image_size": list(inversion.image_size),
        "crop_box": list(inversion.crop_box) if inversion.crop_box else None,
        "source_path": inversion.source_path,
        "model_source": inversion.model_source,
        "model_identity": inversion.model_identity,
        "model_dtype": inversion.model_dtype,
        "losses": inversion.losses,
        "inner_iterations": inversion.inner_iterations,
        "wall_time": inversion.wall_time,
        "nulltext_version": __version__,
    }
    metadata = {"format": "pt", "nulltext.format": FORMAT, "nulltext.format_version": str(FORMAT_VERSION),
                "nulltext.header": json.dumps(header)}
    return publish(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), force=force, keep_both=keep_both)


def load_inversion(path: str | Path, model: Model | None = None) -> Inversion:
    """Read and validate an inversion file; with `model`, also check it is the model it was made with.

    Every header field's type and range and every tensor's dtype, shape and values are checked
    against each other (and against `model`) before anything is sampled: anything else raises
    InversionFileError, one line.
    """
    path = Path(path)
    if not path.is_file():
        raise InversionFileError(f"no inversion file at '{path}' — make one with `nulltext invert PHOTO --prompt ...`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k in TENSORS}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise InversionFileError(f"'{path}' is not a readable inversion file (corrupt or not safetensors: "
                                 f"{first_line(e, 120)}) — {REINVERT}") from None
    header_key = check_format(metadata, f"'{path}'")
    inversion = _from_header(metadata.get(header_key), tensors, f"'{path}'")
    if model is None:
        check_inversion(inversion, path)
    else:
        check_model(inversion, model, path)  # the file's own consistency first, then the model's fit
    return inversion


def _from_header(raw, tensors: dict[str, torch.Tensor], where: str) -> Inversion:
    """Build the Inversion from the header JSON (each field's type checked) and the tensors."""
    header = parse_header(raw, where)
    missing = [k for k in ("latent_T", "null_embeddings") if k not in tensors]
    if missing:
        raise InversionFileError(f"{where} has a damaged nulltext header: it has no {missing[0]} tensor — {REINVERT}")
    return Inversion(latent_T=tensors["latent_T"], null_embeddings=tensors["null_embeddings"],
                     photo=tensors.get("photo"), pivot=tensors.get("pivot"), corrections=tensors.get("corrections"),
                     null_pooled=tensors.get("null_pooled"),
                     **{f.name: getattr(header, f.name) for f in dataclasses.fields(header)})


# ---------------------------------------------------------------------------------------------
# Consistency: of the inversion with itself, and with a model


def check_inversion(inv: Inversion, path: str | Path | None = None) -> None:
    """Raise InversionFileError unless the inversion's settings, schedule, tensors and sizes agree.

    Used on every load, before every save, and (through `check_model`) before sampling from an
    Inversion built in code.
    """
    where = f"'{path}'" if path is not None else "the inversion"
    problem = _inconsistency(inv)
    if problem:
        raise InversionFileError(f"{where} is inconsistent: {problem} — {REINVERT}")


def _tensor_problem(name: str, t) -> str | None:
    if not isinstance(t, torch.Tensor):
        return f"{name} is a {type(t).__name__}, not a tensor"
    if name == "photo":
        return None if t.dtype == torch.uint8 else f"its photo has dtype {str(t.dtype).removeprefix('torch.')}, not uint8"
    if not t.is_floating_point():
        return f"{name} has dtype {str(t.dtype).removeprefix('torch.')}, not a float type"
    if not torch.isfinite(t).all():
        return f"{name} holds NaN or infinite values"
    return None


def _inconsistency(inv: Inversion) -> str | None:
    """The first thing in `inv` that does not fit the rest, or None: its values here, its sizes in `header`."""
    try:
        InversionConfig(**dataclasses.asdict(inv.config))  # its own checks again: fields can be set after construction
    except (TypeError, ValueError) as e:
        return f"its settings are invalid: {first_line(e, 120)}"
    if not is_text(inv.prompt):
        return "its prompt is not a UTF-8 string"
    try:
        make_schedule(inv.scheduler_config, inv.config.num_steps)
    except ScheduleError as e:
        return f"its scheduler config is unusable: {first_line(e, 120)}"
    stored = {name: getattr(inv, name) for name in TENSORS if getattr(inv, name) is not None}
    for name in ("latent_T", "null_embeddings"):
        stored.setdefault(name, None)
    for name, t in stored.items():
        problem = _tensor_problem(name, t)
        if problem:
            return problem
    return shape_problem(inv, {name: tuple(t.shape) for name, t in stored.items()})


def check_model(inv: Inversion, model: Model, path: str | Path | None = None) -> None:
    """Refuse to replay an inversion on a model other than the one it was made with, or that it does not fit."""
    where = f"'{path}'" if path is not None else "the inversion"
    check_inversion(inv, path)
    if inv.model_identity and inv.model_identity != model.identity:
        raise InversionFileError(
            f"{where} was made with model {inv.model_source!r} (weights {inv.model_identity}), not with "
            f"{model.source!r} (weights {model.identity}) — pass --model {inv.model_source!r} or re-invert"
        )
    C, h, w = inv.latent_T.shape[1:]
    W, H = inv.image_size
    f, m = model.vae_scale_factor, model.size_multiple
    tokens, dim = inv.null_embeddings.shape[1:]
    hidden, pooled = model.text_dim, model.pooled_dim
    stored_pooled = None if inv.null_pooled is None else int(inv.null_pooled.shape[1])
    problem = None
    if C != model.latent_channels:
        problem = f"its latent has {C} channels, the model's UNet takes {model.latent_channels}"
    elif (W, H) != (w * f, h * f):
        problem = f"its latent of {w}x{h} is not its image size {W}x{H} / {f}, the model's VAE factor"
    elif W % m or H % m:
        problem = f"its image size {W}x{H} is not a multiple of {m}, which this model needs"
    elif (tokens, dim) != (model.text_tokens, hidden):
        problem = f"its null embeddings are {tokens}×{dim}, the model's text encoder gives {model.text_tokens}×{hidden}"
    elif stored_pooled != pooled:
        problem = (f"it has no pooled null embeddings, which this model needs ({pooled} wide)" if stored_pooled is None
                   else f"its pooled null embeddings are {stored_pooled} wide, the model takes "
                        f"{pooled if pooled is not None else 'none (it is not an SDXL or SD 3.x model)'}")
    elif make_schedule(inv.scheduler_config, inv.config.num_steps).prediction_type != \
            make_schedule(model.scheduler_config, inv.config.num_steps).prediction_type:
        problem = "its scheduler's prediction type differs from the model's"
    if problem:
        raise InversionFileError(f"{where} does not fit model {model.source!r}: {problem} — "
                                 f"{REINVERT} with this model")


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))

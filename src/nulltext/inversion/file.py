"""The inversion file: one .safetensors file, tensors plus a JSON header.

Tensors: `latent_T` (1,C,h,w), `null_embeddings` (T,tokens,dim), optionally `pivot` (T+1,C,h,w),
`photo` (H,W,3) uint8, for direct inversion `corrections` (T,C,h,w), and for SDXL `null_pooled` (T,P),
the pooled part of ∅_t that SDXL's pipeline takes as `negative_pooled_prompt_embeds` (its size
micro-conditioning follows from the image size in the header). The header metadata holds
namespaced keys `nulltext.format` = "nulltext-inversion", `nulltext.format_version` and
`nulltext.header` = JSON of everything else (prompt, settings, scheduler config, sizes, crop, model
source and identity, per-step losses and iterations, wall time, nulltext version), and `format` = "pt",
the framework tag Hugging Face tools read. Files of nulltext 0.1.0, which used the plain keys
`format`, `format_version` and `nulltext`, are still read.

Writes are atomic and exclusive (`outputs.publish`): an interrupted run never leaves a half-written
file and never destroys the previous one. Loading checks the format, the version, every header
field's type and range, every tensor's dtype, shape and values against the header, the schedule
diffusers makes of the scheduler config, and — given a model — that it is the model the file was
made with and that the latent, image size and embeddings fit it; all before anything is sampled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nulltext import __version__
from nulltext.core.ddim import ScheduleError, make_schedule
from nulltext.inversion.null_text import Inversion, InversionConfig
from nulltext.model import Model
from nulltext.io.outputs import publish
from nulltext.errors import NulltextError, first_line, short

FORMAT = "nulltext-inversion"
FORMAT_VERSION = 1
_TENSORS = ("latent_T", "null_embeddings", "pivot", "photo", "corrections", "null_pooled")


class InversionFileError(NulltextError, ValueError):
    """A missing, corrupt, foreign or mismatched inversion file; one line saying what and how to fix."""


MAX_IMAGE_SIDE = 1 << 16
_DTYPES = ("", "float32", "float16", "bfloat16")
_REINVERT = "re-run `nulltext invert`"


def save_inversion(inversion: Inversion, path: str | Path, force: bool = True, keep_both: bool = False) -> Path:
    """Write the inversion to one .safetensors file, atomically; checked first, so a file that saves also loads."""
    path = Path(path)
    check_inversion(inversion)
    tensors = {name: getattr(inversion, name) for name in _TENSORS if getattr(inversion, name) is not None}
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


def _header_keys(metadata: dict[str, str]) -> tuple[str, str] | None:
    """(version key, header key) of a nulltext file: namespaced, or nulltext 0.1.0's plain keys; else None."""
    if metadata.get("nulltext.format") == FORMAT:
        return "nulltext.format_version", "nulltext.header"
    if metadata.get("format") == FORMAT:
        return "format_version", "nulltext"
    return None


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
            tensors = {k: f.get_tensor(k) for k in f.keys() if k in _TENSORS}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise InversionFileError(f"'{path}' is not a readable inversion file (corrupt or not safetensors: "
                                 f"{first_line(e, 120)}) — {_REINVERT}") from None
    keys = _header_keys(metadata)
    if keys is None:
        raise InversionFileError(f"'{path}' is a safetensors file but not a nulltext inversion — "
                                 "pass a file written by `nulltext invert`")
    version_key, header_key = keys
    if metadata.get(version_key) != str(FORMAT_VERSION):
        raise InversionFileError(f"'{path}' has inversion format version {str(metadata.get(version_key))[:20]}, "
                                 f"this nulltext reads version {FORMAT_VERSION} — {_REINVERT} with this version")
    inversion = _from_header(metadata.get(header_key), tensors, f"'{path}'")
    if model is None:
        check_inversion(inversion, path)
    else:
        check_model(inversion, model, path)  # the file's own consistency first, then the model's fit
    return inversion


# ---------------------------------------------------------------------------------------------
# The header, field by field


class _Bad(Exception):
    """One header field that is missing or of the wrong type (internal; becomes InversionFileError)."""


def _get(h: dict, key: str, kind, default=_Bad, what: str = ""):
    if key not in h:
        if default is _Bad:
            raise _Bad(f"has no {key!r}")
        return default
    value = h[key]
    ok = kind(value) if callable(kind) and not isinstance(kind, type) else isinstance(value, kind)
    if not ok or (isinstance(value, bool) and kind in (int, (int, float))):
        raise _Bad(f"{key} is {short(repr(value))}, not {what or getattr(kind, '__name__', 'valid')}")
    return value


def _text(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")  # JSON can carry lone surrogates, which the tokenizer cannot read
    except UnicodeEncodeError:
        return False
    return True


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ints(n: int | None, low: int):
    def check(value) -> bool:
        return (isinstance(value, list) and (n is None or len(value) == n)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value))
    return check


def _from_header(raw, tensors: dict[str, torch.Tensor], where: str) -> Inversion:
    """Build the Inversion from the header JSON and tensors, checking each field's type."""
    try:
        if not isinstance(raw, str):
            raise _Bad("has no nulltext header")
        try:
            h = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise _Bad(f"is not JSON ({first_line(e, 120)})") from None
        if not isinstance(h, dict):
            raise _Bad("is not a JSON object")
        raw_config = _get(h, "config", dict, what="a JSON object")
        known = {f.name for f in dataclasses.fields(InversionConfig)}
        try:
            config = InversionConfig(**{k: v for k, v in raw_config.items() if k in known})  # checks itself
        except (TypeError, ValueError) as e:
            raise _Bad(f"has invalid settings: {first_line(e, 120)}") from None
        missing = [k for k in ("latent_T", "null_embeddings") if k not in tensors]
        if missing:
            raise _Bad(f"has no {missing[0]} tensor")
        crop = _get(h, "crop_box", lambda v: v is None or _ints(4, 0)(v), None, "four whole numbers ≥ 0")
        return Inversion(
            latent_T=tensors["latent_T"], null_embeddings=tensors["null_embeddings"],
            prompt=_get(h, "prompt", _text, what="a UTF-8 string"), config=config,
            scheduler_config=_get(h, "scheduler_config", dict, what="a JSON object"),
            image_size=tuple(_get(h, "image_size", _ints(2, 1), what="two whole numbers ≥ 1")),
            model_source=_get(h, "model_source", _text, "", "a string"),
            model_identity=_get(h, "model_identity", _text, "", "a string"),
            photo=tensors.get("photo"), crop_box=tuple(crop) if crop else None,
            source_path=_get(h, "source_path", lambda v: v is None or _text(v), None, "a string"),
            losses=_get(h, "losses", lambda v: isinstance(v, list) and all(_finite(x) for x in v), [],
                        "a list of finite numbers"),
            inner_iterations=_get(h, "inner_iterations", _ints(None, 0), [], "a list of whole numbers ≥ 0"),
            wall_time=float(_get(h, "wall_time", lambda v: _finite(v) and v >= 0, 0.0, "a number ≥ 0")),
            model_dtype=_get(h, "model_dtype", lambda v: v in _DTYPES, "", "one of " + ", ".join(_DTYPES[1:])),
            pivot=tensors.get("pivot"), corrections=tensors.get("corrections"), null_pooled=tensors.get("null_pooled"),
        )
    except _Bad as e:
        raise InversionFileError(f"{where} has a damaged nulltext header: it {e} — {_REINVERT}") from None


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
        raise InversionFileError(f"{where} is inconsistent: {problem} — {_REINVERT}")


def _tensor_problem(name: str, t, ndim: int, floating: bool = True) -> str | None:
    if not isinstance(t, torch.Tensor):
        return f"{name} is a {type(t).__name__}, not a tensor"
    if floating and not t.is_floating_point():
        return f"{name} has dtype {str(t.dtype).removeprefix('torch.')}, not a float type"
    if t.ndim != ndim or 0 in t.shape:
        return f"{name} has shape {tuple(t.shape)}, expected {ndim} non-empty dimensions"
    if floating and not torch.isfinite(t).all():
        return f"{name} holds NaN or infinite values"
    return None


def _inconsistency(inv: Inversion) -> str | None:
    """The first thing in `inv` that does not fit the rest, or None."""
    try:
        InversionConfig(**dataclasses.asdict(inv.config))  # its own checks again: fields can be set after construction
    except (TypeError, ValueError) as e:
        return f"its settings are invalid: {first_line(e, 120)}"
    T = inv.config.num_steps
    if not _text(inv.prompt):
        return "its prompt is not a UTF-8 string"
    try:
        make_schedule(inv.scheduler_config, T)
    except ScheduleError as e:
        return f"its scheduler config is unusable: {first_line(e, 120)}"
    size = tuple(inv.image_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                                 for v in size):
        return f"its image size {short(repr(inv.image_size))} is not two whole numbers 1…{MAX_IMAGE_SIDE}"
    W, H = size
    for name, t, ndim in (("latent_T", inv.latent_T, 4), ("null_embeddings", inv.null_embeddings, 3),
                          ("pivot", inv.pivot, 4), ("corrections", inv.corrections, 4),
                          ("null_pooled", inv.null_pooled, 2)):
        if t is not None or name in ("latent_T", "null_embeddings"):
            problem = _tensor_problem(name, t, ndim)
            if problem:
                return problem
    latent = tuple(inv.latent_T.shape)
    if latent[0] != 1:
        return f"latent_T has shape {latent}, expected (1, C, h, w)"
    C, h, w = latent[1:]
    if inv.null_embeddings.shape[0] != T:
        return f"null_embeddings has shape {tuple(inv.null_embeddings.shape)}, expected ({T}, tokens, dim) for {T} steps"
    if inv.null_pooled is not None and inv.null_pooled.shape[0] != T:
        return f"null_pooled has shape {tuple(inv.null_pooled.shape)}, expected ({T}, dim) for {T} steps"
    if inv.pivot is not None and tuple(inv.pivot.shape) != (T + 1, C, h, w):
        return f"pivot has shape {tuple(inv.pivot.shape)}, expected {(T + 1, C, h, w)}"
    if inv.config.method == "direct" and inv.corrections is None:
        return "a direct inversion needs its per-step corrections"
    if inv.corrections is not None and inv.config.method != "direct":
        return f"it stores corrections, which only a direct inversion has, but its method is {inv.config.method}"
    if inv.corrections is not None and tuple(inv.corrections.shape) != (T, C, h, w):
        return f"corrections has shape {tuple(inv.corrections.shape)}, expected {(T, C, h, w)}"
    factor = W // w
    if W % w or H % h or H // h != factor or factor & (factor - 1):
        return f"its latent of {w}x{h} does not match its image size {W}x{H} (the VAE scales by a power of 2)"
    if inv.photo is not None:
        photo = inv.photo
        if not isinstance(photo, torch.Tensor) or photo.dtype != torch.uint8 or tuple(photo.shape) != (H, W, 3):
            shape = tuple(photo.shape) if isinstance(photo, torch.Tensor) else type(photo).__name__
            return f"its photo is {shape} {getattr(photo, 'dtype', '')}, expected ({H}, {W}, 3) uint8"
    for name, values in (("losses", inv.losses), ("inner_iterations", inv.inner_iterations)):
        if len(values) not in (0, T):
            return f"it has {len(values)} {name.replace('_', ' ')} for {T} steps"
    if inv.crop_box is not None and len(tuple(inv.crop_box)) != 4:
        return f"its crop box {short(repr(inv.crop_box))} is not four numbers"
    return None


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
    elif (tokens, dim) != (model.max_tokens, hidden):
        problem = f"its null embeddings are {tokens}×{dim}, the model's text encoder gives {model.max_tokens}×{hidden}"
    elif stored_pooled != pooled:
        problem = (f"it has no pooled null embeddings, which this SDXL model needs ({pooled} wide)" if stored_pooled is None
                   else f"its pooled null embeddings are {stored_pooled} wide, the model takes "
                        f"{pooled if pooled is not None else 'none (it is not an SDXL model)'}")
    elif make_schedule(inv.scheduler_config, inv.config.num_steps).prediction_type != \
            model.scheduler_config.get("prediction_type", "epsilon"):
        problem = "its scheduler's prediction type differs from the model's"
    if problem:
        raise InversionFileError(f"{where} does not fit model {model.source!r}: {problem} — "
                                 f"{_REINVERT} with this model")


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))

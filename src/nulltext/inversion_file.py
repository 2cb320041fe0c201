"""The inversion file: one .safetensors file, tensors plus a JSON header.

Tensors: `latent_T` (1,C,h,w), `null_embeddings` (T,tokens,dim), optionally `pivot` (T+1,C,h,w),
`photo` (H,W,3) uint8 and, for direct inversion, `corrections` (T,C,h,w). The header metadata holds `format` = "nulltext-inversion", `format_version`
and `nulltext` = JSON of everything else (prompt, settings, scheduler config, sizes, crop, model
source and identity, per-step losses and iterations, wall time, nulltext version).

Writes are atomic (temporary file in the same folder, then rename): an interrupted run never leaves
a half-written file and never destroys the previous one. Loading checks the format, the version, the
shapes, and — given a model — that it is the model the file was made with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nulltext import __version__
from nulltext.inversion import Inversion, InversionConfig
from nulltext.model import Model

FORMAT = "nulltext-inversion"
FORMAT_VERSION = 1
_TENSORS = ("latent_T", "null_embeddings", "pivot", "photo", "corrections")


class InversionFileError(ValueError):
    """A missing, corrupt, foreign or mismatched inversion file; one line saying what and how to fix."""


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_inversion(inversion: Inversion, path: str | Path, force: bool = True) -> Path:
    """Write the inversion to one .safetensors file, atomically."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists — pass --force to overwrite it")
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
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "nulltext": json.dumps(header)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_inversion(path: str | Path, model: Model | None = None) -> Inversion:
    """Read and validate an inversion file; with `model`, also check it is the model it was made with."""
    path = Path(path)
    if not path.is_file():
        raise InversionFileError(f"no inversion file at '{path}' — make one with `nulltext invert PHOTO --prompt ...`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise InversionFileError(f"'{path}' is not a readable inversion file (corrupt or not safetensors: "
                                 f"{str(e).splitlines()[0][:100]}) — re-run `nulltext invert`") from None
    if metadata.get("format") != FORMAT:
        raise InversionFileError(f"'{path}' is a safetensors file but not a nulltext inversion — "
                                 "pass a file written by `nulltext invert`")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise InversionFileError(f"'{path}' has inversion format version {metadata.get('format_version')}, this "
                                 f"nulltext reads version {FORMAT_VERSION} — re-run `nulltext invert` with this version")
    try:
        h = json.loads(metadata["nulltext"])
        known = {f.name for f in dataclasses.fields(InversionConfig)}
        config = InversionConfig(**{k: v for k, v in h["config"].items() if k in known})
        inversion = Inversion(
            latent_T=tensors["latent_T"], null_embeddings=tensors["null_embeddings"], prompt=h["prompt"],
            config=config, scheduler_config=h["scheduler_config"], image_size=tuple(h["image_size"]),
            model_source=h["model_source"], model_identity=h["model_identity"], photo=tensors.get("photo"),
            crop_box=tuple(h["crop_box"]) if h.get("crop_box") else None, source_path=h.get("source_path"),
            losses=h.get("losses", []), inner_iterations=h.get("inner_iterations", []),
            wall_time=h.get("wall_time", 0.0), model_dtype=h.get("model_dtype", ""), pivot=tensors.get("pivot"), corrections=tensors.get("corrections"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InversionFileError(f"'{path}' has a damaged nulltext header ({type(e).__name__}: {e}) — "
                                 "re-run `nulltext invert`") from None
    _check_shapes(inversion, path)
    if model is not None:
        check_model(inversion, model, path)
    return inversion


def _check_shapes(inv: Inversion, path: Path) -> None:
    T = inv.config.num_steps
    problems = []
    if inv.latent_T.ndim != 4 or inv.latent_T.shape[0] != 1:
        problems.append(f"latent_T has shape {tuple(inv.latent_T.shape)}, expected (1, C, h, w)")
    if inv.null_embeddings.ndim != 3 or inv.null_embeddings.shape[0] != T:
        problems.append(f"null_embeddings has shape {tuple(inv.null_embeddings.shape)}, expected ({T}, tokens, dim)")
    if inv.pivot is not None and (inv.pivot.shape[0] != T + 1 or inv.pivot.shape[1:] != inv.latent_T.shape[1:]):
        problems.append(f"pivot has shape {tuple(inv.pivot.shape)}, expected ({T + 1}, {tuple(inv.latent_T.shape[1:])})")
    if inv.config.method == "direct" and (inv.corrections is None or inv.corrections.shape[0] != T):
        problems.append("a direct inversion needs its per-step corrections")
    if problems:
        raise InversionFileError(f"'{path}' is inconsistent: {problems[0]} — re-run `nulltext invert`")


def check_model(inv: Inversion, model: Model, path: str | Path = "the inversion") -> None:
    """Refuse to replay an inversion on a model other than the one it was made with."""
    if inv.model_identity == "":
        return
    if inv.model_identity != model.identity:
        raise InversionFileError(
            f"'{path}' was made with model {inv.model_source!r} (weights {inv.model_identity}), not with "
            f"{model.source!r} (weights {model.identity}) — pass --model {inv.model_source!r} or re-invert"
        )
    tokens, dim = inv.null_embeddings.shape[1:]
    if (tokens, dim) != (model.max_tokens, model.text_encoder.config.hidden_size):
        raise InversionFileError(f"'{path}' has null embeddings of {tokens}×{dim}, the model's text encoder "
                                 f"gives {model.max_tokens}×{model.text_encoder.config.hidden_size}")


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))

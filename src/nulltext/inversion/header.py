"""The inversion file's header, read without torch: what `nulltext info` shows, and the field-by-field
checks every load applies.

A `.nti` file is a safetensors file: 8 bytes (little-endian length N), N bytes of JSON, then the tensor
data. The JSON maps each tensor's name to its dtype, shape and byte range, and `__metadata__` to
string pairs: `nulltext.format` = "nulltext-inversion", `nulltext.format_version` and
`nulltext.header` = JSON of the inversion's settings, prompt, sizes, model and losses (nulltext 0.1.0
used the plain keys `format`, `format_version` and `nulltext`). Reading this part alone takes
milliseconds: no tensor is read and nothing heavy is imported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from nulltext.errors import NulltextError, first_line, short
from nulltext.inversion.config import InversionConfig
from nulltext.settings import utf8_problem

FORMAT = "nulltext-inversion"
FORMAT_VERSION = 1
TENSORS = ("latent_T", "null_embeddings", "pivot", "photo", "corrections", "null_pooled")
MAX_IMAGE_SIDE = 1 << 16
DTYPES = ("", "float32", "float16", "bfloat16")
REINVERT = "re-run `nulltext invert`"
_MAX_JSON = 100 << 20  # safetensors' own limit on the header's length


class InversionFileError(NulltextError, ValueError):
    """A missing, corrupt, foreign or mismatched inversion file; one line saying what and how to fix."""


@dataclass
class Header:
    """The inversion file's fields (everything but the tensors' values), each checked for its type."""

    prompt: str
    config: InversionConfig
    scheduler_config: dict
    image_size: tuple[int, int]  # (width, height)
    model_source: str = ""
    model_identity: str = ""
    crop_box: tuple[int, int, int, int] | None = None
    source_path: str | None = None
    losses: list[float] = dataclasses.field(default_factory=list)
    inner_iterations: list[int] = dataclasses.field(default_factory=list)
    wall_time: float = 0.0
    model_dtype: str = ""


@dataclass
class FileHeader:
    """What the first bytes of an `.nti` file say: its fields and each tensor's (dtype, shape)."""

    header: Header
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name → (safetensors dtype, e.g. "F32", shape)


def header_keys(metadata: dict[str, str]) -> tuple[str, str] | None:
    """(version key, header key) of a nulltext file: namespaced, or nulltext 0.1.0's plain keys; else None."""
    if metadata.get("nulltext.format") == FORMAT:
        return "nulltext.format_version", "nulltext.header"
    if metadata.get("format") == FORMAT:
        return "format_version", "nulltext"
    return None


def read_file_header(path: str | Path) -> FileHeader:
    """Read and check an inversion file's header and tensor table, not its tensors; InversionFileError if
    it is missing, not safetensors, cut short, foreign, of another version or has a damaged header."""
    path = Path(path)
    if not path.is_file():
        raise InversionFileError(f"no inversion file at '{path}' — make one with `nulltext invert PHOTO --prompt ...`")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_JSON:
                raise ValueError(f"header of {n} bytes")
            raw = f.read(n)
        if len(raw) != n:
            raise ValueError("the file ends inside its header")
        table = json.loads(raw)
        if not isinstance(table, dict):
            raise ValueError("the header is not a JSON object")
        metadata = table.pop("__metadata__", None) or {}
        data_size = path.stat().st_size - 8 - n
        tensors = {}
        for name, entry in table.items():
            start, end = entry["data_offsets"]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_size):
                raise ValueError(f"tensor {short(name)} lies outside the file")
            tensors[name] = (str(entry["dtype"]), tuple(int(v) for v in entry["shape"]))
    except (OSError, ValueError, KeyError, TypeError, struct.error, RecursionError) as e:
        raise InversionFileError(f"'{path}' is not a readable inversion file (corrupt or not safetensors: "
                                 f"{first_line(e, 120)}) — {REINVERT}") from None
    header = parse_header(metadata.get(check_format(metadata, f"'{path}'")), f"'{path}'")
    tensors = {k: v for k, v in tensors.items() if k in TENSORS}
    problem = next((f"{name} has dtype {dtype}, not {'U8' if name == 'photo' else 'a float type'}"
                    for name, (dtype, _) in tensors.items() if (dtype == "U8") != (name == "photo")
                    or dtype not in ("U8", "F16", "BF16", "F32", "F64")), None)
    problem = problem or shape_problem(header, {name: shape for name, (_, shape) in tensors.items()})
    if problem:
        raise InversionFileError(f"'{path}' is inconsistent: {problem} — {REINVERT}")
    return FileHeader(header, tensors)


def check_format(metadata: dict, where: str) -> str:
    """The metadata key of a nulltext inversion's header; refuses a safetensors file that is not a nulltext
    inversion, or of another format version."""
    keys = header_keys(metadata) if isinstance(metadata, dict) else None
    if keys is None:
        raise InversionFileError(f"{where} is a safetensors file but not a nulltext inversion — "
                                 "pass a file written by `nulltext invert`")
    if metadata.get(keys[0]) != str(FORMAT_VERSION):
        raise InversionFileError(f"{where} has inversion format version {str(metadata.get(keys[0]))[:20]}, "
                                 f"this nulltext reads version {FORMAT_VERSION} — {REINVERT} with this version")
    return keys[1]


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


def is_text(value) -> bool:
    """A str that UTF-8 can carry (JSON can hold lone surrogates, which the tokenizer cannot read)."""
    return isinstance(value, str) and utf8_problem(value) is None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ints(n: int | None, low: int):
    def check(value) -> bool:
        return (isinstance(value, list) and (n is None or len(value) == n)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value))
    return check


def parse_header(raw, where: str) -> Header:
    """The header JSON as a `Header`, each field's type checked; InversionFileError naming the first bad one."""
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
        settings = {k: v for k, v in raw_config.items() if k in known}
        settings.setdefault("optimizer", "adam")  # files from before the secant optimiser ran the paper's Adam
        if settings["optimizer"] == "secant" and "trials" not in raw_config:  # `--fast` files: trials ≤ N
            settings["trials"] = settings.get("inner_steps", 10)
        settings.setdefault("refine_last_step", False)  # files from before it stopped ∅_1 at the threshold too
        try:
            config = InversionConfig(**settings)  # checks itself
        except (TypeError, ValueError) as e:
            raise _Bad(f"has invalid settings: {first_line(e, 120)}") from None
        crop = _get(h, "crop_box", lambda v: v is None or _ints(4, 0)(v), None, "four whole numbers ≥ 0")
        return Header(
            prompt=_get(h, "prompt", is_text, what="a UTF-8 string"), config=config,
            scheduler_config=_get(h, "scheduler_config", dict, what="a JSON object"),
            image_size=tuple(_get(h, "image_size", _ints(2, 1), what="two whole numbers ≥ 1")),
            model_source=_get(h, "model_source", is_text, "", "a string"),
            model_identity=_get(h, "model_identity", is_text, "", "a string"),
            crop_box=tuple(crop) if crop else None,
            source_path=_get(h, "source_path", lambda v: v is None or is_text(v), None, "a string"),
            losses=_get(h, "losses", lambda v: isinstance(v, list) and all(_finite(x) for x in v), [],
                        "a list of finite numbers"),
            inner_iterations=_get(h, "inner_iterations", _ints(None, 0), [], "a list of whole numbers ≥ 0"),
            wall_time=float(_get(h, "wall_time", lambda v: _finite(v) and v >= 0, 0.0, "a number ≥ 0")),
            model_dtype=_get(h, "model_dtype", lambda v: v in DTYPES, "", "one of " + ", ".join(DTYPES[1:])),
        )
    except _Bad as e:
        raise InversionFileError(f"{where} has a damaged nulltext header: it {e} — {REINVERT}") from None


# ---------------------------------------------------------------------------------------------
# Sizes and shapes: of the header with the tensor table (values are checked where they are read)


def shape_problem(inv, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first size or shape in an inversion (a `Header` or an `Inversion`: its config, image size,
    losses, iterations and crop box) that does not fit the rest, given each stored tensor's shape; or None."""
    T = inv.config.num_steps
    size = tuple(inv.image_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                                 for v in size):
        return f"its image size {short(repr(inv.image_size))} is not two whole numbers 1…{MAX_IMAGE_SIDE}"
    W, H = size
    for name, ndim in (("latent_T", 4), ("null_embeddings", 3), ("pivot", 4), ("corrections", 4), ("null_pooled", 2)):
        shape = shapes.get(name)
        if shape is None and name in ("latent_T", "null_embeddings"):
            return f"it has no {name} tensor"
        if shape is not None and (len(shape) != ndim or 0 in shape):
            return f"{name} has shape {shape}, expected {ndim} non-empty dimensions"
    latent, nulls, pooled = shapes["latent_T"], shapes["null_embeddings"], shapes.get("null_pooled")
    if latent[0] != 1:
        return f"latent_T has shape {latent}, expected (1, C, h, w)"
    C, h, w = latent[1:]
    if nulls[0] != T:
        return f"null_embeddings has shape {nulls}, expected ({T}, tokens, dim) for {T} steps"
    if pooled is not None and pooled[0] != T:
        return f"null_pooled has shape {pooled}, expected ({T}, dim) for {T} steps"
    if shapes.get("pivot") not in (None, (T + 1, C, h, w)):
        return f"pivot has shape {shapes['pivot']}, expected {(T + 1, C, h, w)}"
    corrections = shapes.get("corrections")
    if inv.config.method == "direct" and corrections is None:
        return "a direct inversion needs its per-step corrections"
    if corrections is not None and inv.config.method != "direct":
        return f"it stores corrections, which only a direct inversion has, but its method is {inv.config.method}"
    if corrections not in (None, (T, C, h, w)):
        return f"corrections has shape {corrections}, expected {(T, C, h, w)}"
    factor = W // w
    if W % w or H % h or H // h != factor or factor & (factor - 1):
        return f"its latent of {w}x{h} does not match its image size {W}x{H} (the VAE scales by a power of 2)"
    if shapes.get("photo") not in (None, (H, W, 3)):
        return f"its photo is {shapes['photo']}, expected ({H}, {W}, 3) uint8"
    for name, values in (("losses", inv.losses), ("inner_iterations", inv.inner_iterations)):
        if len(values) not in (0, T):
            return f"it has {len(values)} {name.replace('_', ' ')} for {T} steps"
    if inv.crop_box is not None and len(tuple(inv.crop_box)) != 4:
        return f"its crop box {short(repr(inv.crop_box))} is not four numbers"
    return None

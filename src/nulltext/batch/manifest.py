"""Reading a manifest: JSONL, CSV or a PIE-Bench mapping_file.json, one `Row` per entry.

Every field is checked as data before any work (`_check_data`: UTF-8 text of at most MAX_TEXT
characters, 64-bit numbers, nesting at most MAX_DEPTH levels); a row that fails carries its one-line
`error` and the other rows are kept. A ManifestError is for a manifest that cannot be read as a whole.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nulltext.inversion.null_text import InversionConfig
from nulltext.settings import utf8_problem
from nulltext.errors import NulltextError

ROW_KEYS = ("image", "prompt", "id", "edits")
SETTING_KEYS = tuple(f.name for f in dataclasses.fields(InversionConfig))
MAX_TEXT = 4096  # characters of any text in a row (a path: Linux's PATH_MAX; a prompt is also held to the model's tokens)
MAX_DEPTH = 6  # levels of objects and lists in a row (row → edits → edit → word_cross_replace → range: 5)


class ManifestError(NulltextError, ValueError):
    """A manifest that cannot be read as a whole; one line naming the file and the fix."""


# ---------------------------------------------------------------------------------------------
# Reading a manifest


@dataclass
class Row:
    """One manifest row as written: paths resolved, nothing checked yet beyond its shape."""

    number: int  # 1-based position in the manifest
    id: str
    image: str
    prompt: str
    settings: dict = field(default_factory=dict)  # InversionConfig fields given by the row
    edits: list[dict] = field(default_factory=list)  # {"target": …, EditConfig options, "mask": path}
    error: str | None = None  # what is wrong with the row's shape, if anything


def read_manifest(path: str | Path, images_dir: str | Path | None = None) -> list[Row]:
    """The rows of a JSONL, CSV or PIE-Bench mapping_file.json manifest; ManifestError if it cannot be read.

    Each row is checked as data here (`_row`); a row that fails carries its one-line `error` and the
    others are kept. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"no manifest at '{path}' — pass a .jsonl, .csv or PIE-Bench mapping_file.json")
    base = Path(os.path.abspath(path.parent))  # absolute paths: Ray workers run elsewhere
    try:
        if path.suffix == ".csv":
            return _csv_rows(path, base)
        if path.suffix == ".json":
            return _pie_rows(path, Path(os.path.abspath(images_dir)) if images_dir else base / "annotation_images")
        return _jsonl_rows(path, base)
    except OSError as e:
        raise ManifestError(f"cannot read manifest '{path}': {e.strerror or e}") from None


def _jsonl_rows(path: Path, base: Path) -> list[Row]:
    """One row a line; split on "\n" alone (a JSON string may hold U+2028), bytes that are not UTF-8 kept
    as surrogate escapes so the field holding them is named (`_check_data`)."""
    rows = []
    lines = path.read_bytes().removeprefix(codecs.BOM_UTF8).split(b"\n")
    for n, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", "surrogateescape")
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(Row(n, str(n), "", "", error=f"line {n} is not JSON ({e.msg} at column {e.colno}) — "
                                                     "write one JSON object per line"))
            continue
        except RecursionError:
            rows.append(Row(n, str(n), "", "", error=f"line {n} is nested too deeply to read — a row is an object "
                                                     f"at most {MAX_DEPTH} levels deep"))
            continue
        except ValueError:  # a number past Python's 4300-digit limit for int(str)
            rows.append(Row(n, str(n), "", "", error=f"line {n} holds a number of thousands of digits — a row's "
                                                     "numbers fit in 64 bits"))
            continue
        rows.append(_row(n, item, base))
    return rows


def _csv_rows(path: Path, base: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            names = reader.fieldnames or []
        except csv.Error as e:
            raise ManifestError(f"manifest '{path}': its header row is not CSV ({e}) — write a header row of "
                                "column names") from None
        unknown = [c for c in names if c not in ROW_KEYS + SETTING_KEYS]
        if unknown or not {"image", "prompt"} <= set(names):
            raise ManifestError(f"manifest '{path}': " + (f"unknown column {_clip(repr(unknown[0]), 80)}" if unknown
                                else "no image and prompt columns") + " — use image, prompt, id, edits and "
                                f"inversion settings ({', '.join(SETTING_KEYS)})")
        rows, n = [], 1  # line 1 is the header; rows are numbered from 2
        while True:
            n += 1
            try:
                record = next(reader)
            except StopIteration:
                return rows
            except csv.Error as e:  # e.g. a cell over the csv module's field size limit
                rows.append(Row(n, str(n), "", "", error=f"row {n} is not valid CSV ({e}) — check its quotes and "
                                                         f"keep each cell under {MAX_TEXT} characters"))
                continue
            item = {k: v for k, v in record.items() if v not in (None, "")}
            try:
                _check_data(item)  # sizes and UTF-8 before any cell is parsed
                if "edits" in item:
                    text = item["edits"].strip()
                    item["edits"] = json.loads(text) if text.startswith("[") else [text]
                item.update({k: _cell(k, item[k]) for k in SETTING_KEYS if k in item})
            except RecursionError:
                rows.append(Row(n, _row_id(item.get("id"), n)[0], "", "", error=f"row {n}: edits is nested too "
                                f"deeply to read — at most {MAX_DEPTH} levels"))
                continue
            except ValueError as e:  # json.JSONDecodeError and _InvalidRow are ValueErrors
                rows.append(Row(n, _row_id(item.get("id"), n)[0], "", "", error=f"row {n}: {e}"))
                continue
            rows.append(_row(n, item, base))


def _cell(name: str, text: str):
    """A CSV cell as the type of the InversionConfig field it sets."""
    kind = type(next(f.default for f in dataclasses.fields(InversionConfig) if f.name == name))
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} {text!r} must be true or false")
        return text.lower() in ("true", "1")
    try:
        return kind(text) if kind is not int else int(text)
    except ValueError:
        raise ValueError(f"{name} {_clip(repr(text), 80)} must be a {'whole number' if kind is int else 'number'}") from None


class _InvalidRow(ValueError):
    """A row field that no check further on should see; the message names the field and the fix."""


def _check_data(value, where: str = "", depth: int = 1) -> None:
    """Refuse what no row field can hold, before any other check reads it: text that is not UTF-8 (a lone
    surrogate, or a byte kept as a surrogate escape) or longer than MAX_TEXT characters, an integer
    beyond 64 bits, nesting deeper than MAX_DEPTH. The walk stops at MAX_DEPTH, so it never recurses far."""
    name = where or "the row"
    if isinstance(value, str):
        problem = utf8_problem(value)
        if problem:
            raise _InvalidRow(f"{name} is not valid UTF-8 ({problem}) — save the manifest as UTF-8 text")
        if len(value) > MAX_TEXT:
            raise _InvalidRow(f"{name} is {len(value)} characters long; at most {MAX_TEXT} — shorten it")
    elif isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 63:
            raise _InvalidRow(f"{name} is a number of {value.bit_length()} bits; at most 63 — use a realistic value")
    elif isinstance(value, (list, dict)):
        if depth > MAX_DEPTH:
            raise _InvalidRow(f"{name} is nested more than {MAX_DEPTH} levels deep — a row holds lists and objects "
                              "only a few levels deep")
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            if isinstance(value, dict):
                _check_data(key, f"a key of {name}", depth + 1)
                part = f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"
            else:
                part = f"[{key}]"
            _check_data(item, f"{where}{part}" if where else part.lstrip("."), depth + 1)


def _row_id(value, n: int) -> tuple[str, str | None]:
    """(the row's id, None) — its number if it has none — or (its number, what is wrong with the id)."""
    if value is None:
        return str(n), None
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() <= 63:
        return str(value), None
    if not isinstance(value, str):
        return str(n), f"row {n}: id must be text or a whole number, got {type(value).__name__} — write \"id\": \"cat-1\""
    try:
        _check_data(value, "id")
    except _InvalidRow as e:
        return str(n), f"row {n}: {e}"
    return value, None


def _row(n: int, item, base: Path) -> Row:
    if not isinstance(item, dict):
        return Row(n, str(n), "", "", error=f"row {n} is not an object with image and prompt")
    rid, problem = _row_id(item.get("id"), n)
    if problem:
        return Row(n, rid, "", "", error=problem)
    try:
        _check_data(item)
    except _InvalidRow as e:
        return Row(n, rid, "", "", error=f"row {n}: {e}")
    unknown = [k for k in item if k not in ROW_KEYS + SETTING_KEYS]
    if unknown:
        return Row(n, rid, "", "", error=f"row {n}: unknown field {unknown[0]!r} — use image, prompt, id, edits "
                                          f"and inversion settings ({', '.join(SETTING_KEYS)})")
    image, prompt, edits = item.get("image"), item.get("prompt"), item.get("edits", [])
    if not isinstance(image, str) or not image:
        return Row(n, rid, "", "", error=f"row {n} has no image path — add \"image\": \"photo.jpg\"")
    if not isinstance(prompt, str):
        return Row(n, rid, image, "", error=f"row {n} has no prompt — add \"prompt\": \"a caption of the photo\"")
    if not isinstance(edits, list) or not all(isinstance(e, (str, dict)) for e in edits):
        return Row(n, rid, image, prompt, error=f"row {n}: edits must be a list of target captions or objects")
    edits = [{"target": e} if isinstance(e, str) else dict(e) for e in edits]
    for i, e in enumerate(edits):
        if e.get("mask") is None:
            e.pop("mask", None)
        elif not isinstance(e["mask"], str) or not e["mask"]:
            got = _clip(json.dumps(e["mask"]), 40)
            return Row(n, rid, image, prompt, error=f"row {n}: edits[{i}].mask must be the path of a mask image, "
                                                     f"got {got} — write \"mask\": \"mask.png\"")
        else:
            e["mask"] = str(base / e["mask"])
    return Row(n, rid, str(base / image), prompt, {k: item[k] for k in SETTING_KEYS if k in item}, edits)


def _pie_rows(path: Path, images_dir: Path) -> list[Row]:
    """A PIE-Bench mapping file's entries as rows; an entry that breaks the format is that row's error."""
    from nulltext.evaluation.pie_bench import PieBenchError, load_mapping, parse_entry

    try:
        raw = load_mapping(path)
    except PieBenchError as e:
        raise ManifestError(str(e)) from None
    rows = []
    for n, (key, item) in enumerate(raw.items(), 1):
        try:
            e = parse_entry(path, key, item)
        except PieBenchError as error:
            rows.append(Row(n, _row_id(key, n)[0], "", "", error=str(error)))
            continue
        rows.append(_row(n, {"id": e.key, "image": e.image_path, "prompt": e.source_prompt,
                             "edits": [{"target": e.target_prompt, "blend_words": e.blend_words}]}, images_dir))
    return rows


def _clip(text: str, n: int) -> str:
    """`text` cut to about `n` characters, its start and end kept (an error's fix comes last)."""
    return text if len(text) <= n else f"{text[: n * 2 // 3]} … {text[-(n // 3):]}"

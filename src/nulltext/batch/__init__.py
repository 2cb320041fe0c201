"""Manifest runs: invert and edit a whole data set, resumably, one bad row never stopping the rest.

A manifest is JSONL (one object a line), CSV (a header row) or a PIE-Bench `mapping_file.json`. Each
row has `image` (a path, relative to the manifest's folder), `prompt` (the source caption), optional
`id`, optional `edits` (a list of target captions, or of objects `{"target": …, EditConfig options,
"mask": PATH}`; in CSV a JSON list or one target caption) and optional inversion settings named as
`InversionConfig`'s fields (`num_steps`, `guidance_scale`, `inner_steps`, `learning_rate`, `method`, …).

Outputs, in OUT/:
    inversions/KEY.nti          KEY = hash of the image bytes, prompt, settings, size and model identity
    edits/KEY-EDITKEY.png       EDITKEY = hash of the target and its edit options; parameters in the PNG text
    results.jsonl               one line per row run: status, PSNR, times, output paths (or the error)

The resume rule: a row is finished when results.jsonl's latest line for its row key (the inversion key
and all its edit keys) says "done" and its files exist; a rerun skips finished rows (`redo` forces
them) and reuses an existing .nti when only the edits changed. Every file is published atomically
(`outputs.publish`) and each results line is one appended write, so a killed run loses at most the
rows in flight and a rerun completes exactly the missing ones. results.jsonl is read as bytes, line by
line: a torn line (even one cut inside a UTF-8 character) is skipped, and one torn at the end is
closed with a newline before the next line is appended.

One bad row never stops the run: every field is checked as data before any work (`_check_data`: text
that is UTF-8 and at most MAX_TEXT characters, 64-bit numbers, nesting at most MAX_DEPTH levels; an
image or mask is a path to a regular file, refused before it is opened if it is a folder, FIFO or
device), and whatever fails becomes that row's one-line error in results.jsonl. A row repeating an
earlier row's content runs once; the copy gets its own line, status "duplicate" with `duplicate_of`.

The work of a batch of rows (`run_tasks`) is one plain function of a loaded model and JSON-ready
tasks: the local loop calls it, and so does each Ray Data actor (`nulltext.batch.ray_data`).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from nulltext.inversion.null_text import InversionConfig
from nulltext.model import Model, utf8_problem
from nulltext.io.outputs import OutputError, probe_folder, remove_stale_temps, write_error
from nulltext.editing.prompt_to_prompt import EditConfig
from nulltext.settings import SettingsError
from nulltext import errors
from nulltext.errors import NulltextError

RESULTS = "results.jsonl"
INVERSIONS, EDITS = "inversions", "edits"
ROW_KEYS = ("image", "prompt", "id", "edits")
SETTING_KEYS = tuple(f.name for f in dataclasses.fields(InversionConfig))
EDIT_KEYS = ("mode", "cross_replace", "word_cross_replace", "self_replace", "reweight", "blend_words",
             "blend_subtract", "blend_mask_combine", "blend_threshold", "blend_start")
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


# ---------------------------------------------------------------------------------------------
# Planning: keys, output names, what is already done


@dataclass
class Task:
    """A row ready to run: checked settings, content keys and output paths (relative to OUT); JSON-ready."""

    number: int
    id: str
    image: str
    prompt: str
    key: str  # row key: the inversion key and every edit key
    inversion_key: str
    settings: dict  # a full InversionConfig as a dict
    size: list[int]  # (width, height)
    inversion: str  # inversions/KEY.nti
    edits: list[dict]  # {"target", "options", "mask", "path"}

    def config(self) -> InversionConfig:
        return InversionConfig(**self.settings)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()


def _file_digest(path: str) -> str:
    from nulltext.io.images import open_regular

    h = hashlib.sha256()
    with open_regular(path) as f:  # a FIFO, device or folder is refused before it is opened
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_row(model: Model, row: Row, base: InversionConfig) -> Task:
    """Check a row (settings, prompts, readable image and masks, edit options) and name its outputs by content."""
    from nulltext.io.images import load_image, load_mask

    if row.error:
        raise ManifestError(row.error)
    config = InversionConfig(**{**dataclasses.asdict(base), **row.settings})
    model.check_prompt(row.prompt)
    size = model.default_size
    load_image(row.image, size)  # an unreadable photo fails here, with its one-line reason
    inversion_key = _digest(_file_digest(row.image), row.prompt, dataclasses.asdict(config), list(size),
                            model.identity)[:24]
    edits = []
    for e in row.edits:
        options = {k: v for k, v in e.items() if k not in ("target", "mask")}
        unknown = [k for k in options if k not in EDIT_KEYS]
        if unknown:
            raise SettingsError(f"edit option {unknown[0]!r} is not one of {', '.join(EDIT_KEYS)}")
        if not isinstance(e.get("target"), str):
            raise SettingsError("an edit has no target caption — add \"target\": \"the edited caption\"")
        _check_edit_shapes(options)
        model.check_prompt(e["target"])
        EditConfig(**_edit_options(options))  # the options' own checks
        mask = e.get("mask")
        if mask:
            load_mask(mask, size)  # a mask that is not an image of the photo's size fails before the inversion
        edit_key = _digest(inversion_key, e["target"], options, _file_digest(mask) if mask else None)[:12]
        edits.append({"target": e["target"], "options": options, "mask": mask,
                      "path": f"{EDITS}/{inversion_key}-{edit_key}.png"})
    key = _digest(inversion_key, [e["path"] for e in edits])[:24]
    return Task(row.number, row.id, row.image, row.prompt, key, inversion_key, dataclasses.asdict(config),
                list(size), f"{INVERSIONS}/{inversion_key}.nti", edits)


def _check_edit_shapes(options: dict) -> None:
    """The edit options EditConfig reads as containers must be ones: reweight and word_cross_replace
    objects, blend_words and blend_subtract lists of words (EditConfig checks the values)."""
    for name, example, ok in (
            ("reweight", '{"cat": 2}', lambda v: isinstance(v, dict)),
            ("word_cross_replace", '{"cat": 0.5}', lambda v: isinstance(v, dict)),
            ("blend_words", '["cat"]', lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v)),
            ("blend_subtract", '["mirror"]', lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v))):
        if name in options and not ok(options[name]):
            raise SettingsError(f"edit option {name} must be like {example}, got {_clip(json.dumps(options[name]), 40)}")


def _edit_options(options: dict) -> dict:
    """EditConfig keyword arguments from JSON options (lists where it takes tuples)."""
    out = dict(options)
    for name in ("cross_replace", "self_replace"):
        if isinstance(out.get(name), list):
            out[name] = tuple(out[name])
    if isinstance(out.get("word_cross_replace"), dict):
        out["word_cross_replace"] = {k: tuple(v) if isinstance(v, list) else v for k, v in out["word_cross_replace"].items()}
    return out


@dataclass
class ResultsLog:
    """What results.jsonl says: the latest record per row key, the rows logged as duplicates, lines unread."""

    latest: dict[str, dict] = field(default_factory=dict)  # row key → its latest record (duplicate lines aside)
    duplicates: set[tuple[int, str]] = field(default_factory=set)  # (row number, row key) logged as "duplicate"
    unreadable: int = 0  # lines that are not a whole record: torn by a killed write, or damaged


def read_results(out: str | Path) -> ResultsLog:
    """Read results.jsonl line by line as bytes: a torn or damaged line (even one cut inside a UTF-8
    character) is counted and skipped, never stopping the run."""
    log = ResultsLog()
    try:
        data = (Path(out) / RESULTS).read_bytes()
    except FileNotFoundError:
        return log
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if record.get("status") == "duplicate":
                log.duplicates.add((record["row"], record["key"]))
            else:
                log.latest[record["key"]] = record
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError is a ValueError
            log.unreadable += 1
    return log


def is_finished(task: Task, out: Path, results: dict[str, dict]) -> bool:
    record = results.get(task.key)
    return (record is not None and record.get("status") == "done" and (out / task.inversion).is_file()
            and all((out / e["path"]).is_file() for e in task.edits))


def prepare_output(out: str | Path) -> list[str]:
    """Make OUT, OUT/inversions and OUT/edits and prove each writable (a probe file: root ignores modes), and
    end results.jsonl with a newline. An OutputError, before any work, for what cannot be written; returns
    one-line warnings (a torn last results line that was closed)."""
    out = Path(out)
    for folder in (out, out / INVERSIONS, out / EDITS):
        if os.path.lexists(folder) and not folder.is_dir():
            raise OutputError(f"cannot write into '{folder}': it is a file, not a folder — move it away or write "
                              "elsewhere with -o")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(folder, e) from None
        probe_folder(folder)
    fd = _open_results(out)
    try:
        torn = _needs_newline(fd)
        if torn:
            _write_all(fd, b"\n")
    finally:
        os.close(fd)
    return [f"{out / RESULTS} ended in a torn line (a killed write); it was closed with a newline and is "
            "skipped — its row runs again"] if torn else []


def _open_results(out: Path) -> int:
    """results.jsonl opened to append (created if missing); OutputError unless it is a regular file."""
    path = out / RESULTS
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"cannot write '{path}': it is not a regular file — move it away or write elsewhere with -o")
    return fd


def _needs_newline(fd: int) -> bool:
    """Whether the file does not end in "\n" (a write torn by a kill): the next line would be glued to it."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def append_result(out: Path, record: dict) -> None:
    """One results line, appended and synced: a kill leaves it whole or absent, or torn, and then the next
    append starts on a new line (the torn fragment stays a line of its own, skipped by `read_results`)."""
    data = _results_line(record)
    fd = _open_results(Path(out))
    try:
        _write_all(fd, b"\n" + data if _needs_newline(fd) else data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _results_line(record: dict) -> bytes:
    """Any record as one JSON line: a value JSON cannot hold (an int past the digit limit, an object) is
    named instead, and text that cannot be UTF-8 (a lone surrogate) keeps JSON's \\uXXXX escape."""
    try:
        text = json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        record = {str(k): _storable(v) for k, v in record.items()}
        text = json.dumps(record, ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


def _storable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError, RecursionError):
        return f"<a {type(value).__name__} JSON cannot hold>"


# ---------------------------------------------------------------------------------------------
# Running tasks (the local loop and each Ray actor)


def run_tasks(model: Model, tasks: list[dict], out: str | Path, redo: bool = False,
              on_step: Callable | None = None) -> list[dict]:
    """Invert (in batches of one setting) and edit the tasks; one results record per task, never raising for a row.

    An existing .nti is reused unless `redo`; an existing edit PNG is kept unless `redo`.
    """
    import numpy as np
    import torch

    from nulltext.inversion.batched import invert_batch
    from nulltext.io.images import load_image, to_tensor
    from nulltext.inversion.file import load_inversion, save_inversion

    out = Path(out)
    tasks = [t if isinstance(t, Task) else Task(**t) for t in tasks]
    records: dict[int, dict] = {}
    inversions, reused, photos, timing = {}, set(), {}, {}
    for i, task in enumerate(tasks):
        try:
            if not redo and (out / task.inversion).is_file():
                inversions[i] = load_inversion(out / task.inversion, model)
                reused.add(i)
            else:
                photos[i] = load_image(task.image, tuple(task.size))
        except Exception as e:  # noqa: BLE001 - a bad row is recorded, the run goes on
            records[i] = _failed(task, e)
    # one invert_batch per inversion setting among the tasks that need inverting; rows with the same
    # inversion key (same photo, prompt and settings, other edits) share one inversion
    groups: dict[str, list[int]] = {}
    first: dict[str, int] = {}
    for i in photos:
        if first.setdefault(tasks[i].inversion_key, i) == i:
            groups.setdefault(json.dumps(tasks[i].settings, sort_keys=True), []).append(i)
    for members in groups.values():
        start = time.perf_counter()
        try:
            results = invert_batch(
                model, [to_tensor(photos[i].image) for i in members], [tasks[i].prompt for i in members],
                tasks[members[0]].config(), on_step,
                provenance=[{"photo": torch.from_numpy(np.asarray(photos[i].image).copy()),
                             "crop_box": photos[i].crop_box, "source_path": tasks[i].image} for i in members],
                on_error="keep")
        except Exception as e:  # noqa: BLE001
            results = [e] * len(members)
        seconds = (time.perf_counter() - start) / len(members)
        for i, result in zip(members, results):
            if isinstance(result, Exception):
                records[i] = _failed(tasks[i], result)
                continue
            try:
                save_inversion(result, out / tasks[i].inversion, force=True)
                inversions[i], timing[i] = result, seconds
            except Exception as e:  # noqa: BLE001
                records[i] = _failed(tasks[i], e)
    for i in photos:  # the rows that shared another row's inversion
        j = first[tasks[i].inversion_key]
        if j != i:
            if j in inversions:
                inversions[i], timing[i] = inversions[j], timing[j]
            else:
                records[i] = _record(tasks[i], "failed", error=records[j]["error"])
    for i, inversion in sorted(inversions.items()):
        try:
            records[i] = _finish(model, tasks[i], inversion, out, redo, i in reused, timing.get(i, 0.0))
        except Exception as e:  # noqa: BLE001
            records[i] = _failed(tasks[i], e)
    return [records[i] for i in range(len(tasks))]


def _finish(model: Model, task: Task, inversion, out: Path, redo: bool, reused: bool, seconds: float) -> dict:
    """Reconstruction PSNR and the edits of one inverted row; its results record."""
    from PIL import Image

    from nulltext import __version__
    from nulltext.editing.from_inversion import edit, reconstruct
    from nulltext.io.images import load_mask, save_png, to_pil
    from nulltext.evaluation.metrics import psnr

    start = time.perf_counter()
    rec = to_pil(reconstruct(model, inversion))[0]
    value = psnr(rec, Image.fromarray(inversion.photo.numpy())) if inversion.photo is not None else None
    for e in task.edits:
        path = out / e["path"]
        if path.is_file() and not redo:
            continue
        options = _edit_options(e["options"])
        if e["mask"]:
            options["blend_mask"] = load_mask(e["mask"], inversion.image_size)
        result = edit(model, inversion, [e["target"]], EditConfig(**options))
        meta = {"nulltext_version": __version__, "model": model.source, "model_identity": model.identity,
                "source_prompt": task.prompt, "kind": "edit", "target_prompt": e["target"],
                "edit_options": json.dumps(e["options"]), "inversion": task.inversion, "row_id": task.id}
        if e["mask"]:
            meta["blend_mask"] = e["mask"]
        save_png(to_pil(result.images[1:])[0], path, meta, force=True)
    return _record(task, "done", psnr=value, inversion=task.inversion, inversion_reused=reused,
                   edits=[e["path"] for e in task.edits], inversion_seconds=round(seconds, 3),
                   edit_seconds=round(time.perf_counter() - start, 3),
                   iterations=sum(inversion.inner_iterations))


def _record(task: Task, status: str, **fields) -> dict:
    """A results record; `worker` (host:pid) says which process ran the row (a Ray actor, or the local run)."""
    import socket

    return {"key": task.key, "row": task.number, "id": task.id, "image": task.image, "prompt": task.prompt,
            "status": status, **fields, "worker": f"{socket.gethostname()}:{os.getpid()}",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def one_line(e: BaseException) -> str:
    """An error as one printable line of at most ~1000 characters (its end, the fix, kept)."""
    return _clip(errors.one_line(e).encode("utf-8", "backslashreplace").decode("utf-8"), 1000)


def _failed(task: Task, e: BaseException) -> dict:
    return _record(task, "failed", error=one_line(e))


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class RunSummary:
    rows: int
    done: int  # rows finished by this run
    skipped: int  # rows finished by an earlier run, or repeating an earlier row of the manifest ("duplicate")
    failed: int
    mean_psnr: float | None  # over every finished row of the manifest
    seconds: float
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row number, error)
    warnings: list[str] = field(default_factory=list)  # one line each: results.jsonl lines torn or unreadable

    def table(self) -> str:
        psnr = "—" if self.mean_psnr is None else f"{self.mean_psnr:.2f} dB"
        lines = ["| rows | done | skipped | failed | mean PSNR | time |", "|---|---|---|---|---|---|",
                 f"| {self.rows} | {self.done} | {self.skipped} | {self.failed} | {psnr} | {self.seconds:.1f} s |"]
        lines += [error if error.startswith(f"row {n}:") else f"row {n}: {error}" for n, error in self.failures]
        return "\n".join(lines)


@dataclass
class BatchConfig:
    """How a manifest run goes: batch size K, redo, and the inversion settings rows start from."""

    batch_size: int = 4  # K photos inverted together
    redo: bool = False  # rerun finished rows and overwrite their files
    inversion: InversionConfig = field(default_factory=InversionConfig)  # defaults rows may override

    def __post_init__(self) -> None:
        from nulltext.settings import check_flag, check_whole

        check_whole(self.batch_size, "batch size", 1)
        check_flag(self.redo, "redo")


Executor = Callable[[list[dict], Callable[[dict], None]], None]  # (tasks, on_result) → runs them all


@dataclass
class Plan:
    """What a run will do with each row of the manifest."""

    tasks: list[Task] = field(default_factory=list)  # rows to run
    failed: list[dict] = field(default_factory=list)  # records of rows that failed their checks (to log)
    duplicates: list[dict] = field(default_factory=list)  # records of rows repeating an earlier row (to log)
    finished: list[dict] = field(default_factory=list)  # records of rows finished before, and duplicates logged before
    warnings: list[str] = field(default_factory=list)


def plan_run(model: Model, rows: list[Row], out: Path, config: BatchConfig) -> Plan:
    """Check every row, name its outputs, and sort it: to run, failed, duplicate, or finished by an earlier run.

    A row with the same content as an earlier row (same row key) runs once; the copy is logged with
    status "duplicate" and `duplicate_of` (the earlier row's number), once — its line is not repeated by
    reruns, and `read_results` keeps it apart from the row key's own record, so resume is unchanged.
    """
    log = read_results(out)
    plan = Plan()
    if log.unreadable:
        plan.warnings.append(f"{Path(out) / RESULTS}: {log.unreadable} unreadable line"
                             f"{'s' if log.unreadable > 1 else ''} (torn by a killed write, or damaged) skipped")
    first: dict[str, int] = {}
    for row in rows:
        try:
            task = plan_row(model, row, config.inversion)
        except Exception as e:  # noqa: BLE001 - a bad row is recorded, the run goes on
            plan.failed.append({"key": f"row-{row.number}-{_digest(row.image, row.prompt)[:12]}", "row": row.number,
                                "id": row.id, "image": row.image, "prompt": row.prompt, "status": "failed",
                                "error": one_line(e), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            continue
        if task.key in first:  # the same content twice: run once, log the copy as a duplicate (skipped)
            logged = (row.number, task.key) in log.duplicates and not config.redo
            (plan.finished if logged else plan.duplicates).append(
                _record(task, "duplicate", duplicate_of=first[task.key]))
            continue
        first[task.key] = row.number
        if not config.redo and is_finished(task, out, log.latest):
            plan.finished.append(log.latest[task.key])
        else:
            plan.tasks.append(task)
    return plan


def run_manifest(model: Model, rows: list[Row], out: str | Path, config: BatchConfig | None = None,
                 executor: Executor | None = None, on_row: Callable[[dict], None] | None = None,
                 on_step: Callable | None = None, on_plan: Callable[[int], None] | None = None) -> RunSummary:
    """Run every unfinished row: plan, execute (locally in batches of K, or by `executor`), log results.jsonl.

    `on_plan(n)` hears how many rows this run will report; `on_row(record)` each results record as it is
    logged; `on_step(StepReport)` each outer step of the batch being inverted (local runs). OUT is probed
    first (`prepare_output`): an OutputError comes before any work.
    """
    config = config or BatchConfig()
    out = Path(out)
    start = time.perf_counter()
    warnings = prepare_output(out)
    for folder in (out, out / INVERSIONS, out / EDITS):
        remove_stale_temps(folder)  # temp files of a killed run
    plan = plan_run(model, rows, out, config)
    records: list[dict] = []
    if on_plan is not None:
        on_plan(len(plan.failed) + len(plan.duplicates) + len(plan.tasks))  # the rows this run will report

    def record(r: dict) -> None:
        append_result(out, r)
        records.append(r)
        if on_row is not None:
            on_row(r)

    for r in plan.failed + plan.duplicates:
        record(r)
    if executor is None:
        for batch in _batches(plan.tasks, config.batch_size):
            for r in run_tasks(model, [dataclasses.asdict(t) for t in batch], out, config.redo, on_step):
                record(r)
    else:
        executor([dataclasses.asdict(t) for t in plan.tasks], record)
    for folder in (out / INVERSIONS, out / EDITS):
        remove_stale_temps(folder)  # of workers killed during this run (Ray retried their rows)
    done = [r for r in records if r["status"] == "done"]
    psnrs = [r["psnr"] for r in done + plan.finished
             if isinstance(r.get("psnr"), (int, float)) and not isinstance(r["psnr"], bool)]
    bad = [r for r in records if r["status"] not in ("done", "duplicate")]
    return RunSummary(len(rows), len(done), len(plan.finished) + len(plan.duplicates), len(bad),
                      sum(psnrs) / len(psnrs) if psnrs else None, time.perf_counter() - start,
                      sorted((r["row"], r.get("error", "")) for r in bad), warnings + plan.warnings)


def _batches(tasks: list[Task], size: int) -> Iterable[list[Task]]:
    """Batches of at most `size` tasks of one inversion setting, in manifest order within each setting."""
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(json.dumps(t.settings, sort_keys=True), []).append(t)
    for group in groups.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]

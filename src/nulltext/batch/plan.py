"""Planning a run: each row checked and named by content (`Task`), and sorted — to run, failed,
duplicate, or finished by an earlier run (`plan_run`); the results records of rows; batches of K tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from nulltext.batch.manifest import ManifestError, Row, _clip
from nulltext.batch.results import EDITS, INVERSIONS, RESULTS, read_results
from nulltext.inversion.null_text import InversionConfig
from nulltext.model import Model
from nulltext.editing.config import EditConfig
from nulltext.settings import SettingsError
from nulltext import errors

EDIT_KEYS = ("mode", "cross_replace", "word_cross_replace", "self_replace", "self_fade", "reweight", "blend_words",
             "blend_subtract", "blend_mask_combine", "blend_threshold", "blend_start")


# ---------------------------------------------------------------------------------------------
# Keys and output names


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


def is_finished(task: Task, out: Path, results: dict[str, dict]) -> bool:
    record = results.get(task.key)
    return (record is not None and record.get("status") == "done" and (out / task.inversion).is_file()
            and all((out / e["path"]).is_file() for e in task.edits))


# ---------------------------------------------------------------------------------------------
# Results records


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
# The plan of a run


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


def _batches(tasks: list[Task], size: int) -> Iterable[list[Task]]:
    """Batches of at most `size` tasks of one inversion setting, in manifest order within each setting."""
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(json.dumps(t.settings, sort_keys=True), []).append(t)
    for group in groups.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]

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
rows in flight and a rerun completes exactly the missing ones.

The work of a batch of rows (`run_tasks`) is one plain function of a loaded model and JSON-ready
tasks: the local loop calls it, and so does each Ray Data actor (`nulltext.batch_ray`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from nulltext.inversion import InversionConfig
from nulltext.model import Model
from nulltext.outputs import remove_stale_temps
from nulltext.prompt_to_prompt import EditConfig
from nulltext.settings import SettingsError

RESULTS = "results.jsonl"
INVERSIONS, EDITS = "inversions", "edits"
ROW_KEYS = ("image", "prompt", "id", "edits")
SETTING_KEYS = tuple(f.name for f in dataclasses.fields(InversionConfig))
EDIT_KEYS = ("mode", "cross_replace", "word_cross_replace", "self_replace", "reweight", "blend_words",
             "blend_subtract", "blend_mask_combine", "blend_threshold", "blend_start")


class ManifestError(ValueError):
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
    """The rows of a JSONL, CSV or PIE-Bench mapping_file.json manifest; ManifestError if it cannot be read."""
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
    except UnicodeDecodeError:
        raise ManifestError(f"manifest '{path}' is not UTF-8 text — save it as UTF-8") from None
    except OSError as e:
        raise ManifestError(f"cannot read manifest '{path}': {e.strerror or e}") from None


def _jsonl_rows(path: Path, base: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(Row(n, str(n), "", "", error=f"line {n} is not JSON ({e.msg}) — write one JSON object per line"))
            continue
        rows.append(_row(n, item, base))
    return rows


def _csv_rows(path: Path, base: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        unknown = [c for c in reader.fieldnames or [] if c not in ROW_KEYS + SETTING_KEYS]
        if unknown or not {"image", "prompt"} <= set(reader.fieldnames or []):
            raise ManifestError(f"manifest '{path}': " + (f"unknown column {unknown[0]!r}" if unknown else
                                "no image and prompt columns") + " — use image, prompt, id, edits and "
                                f"inversion settings ({', '.join(SETTING_KEYS)})")
        rows = []
        for n, record in enumerate(reader, 2):  # line 1 is the header
            item = {k: v for k, v in record.items() if v not in (None, "")}
            try:
                if "edits" in item:
                    text = item["edits"].strip()
                    item["edits"] = json.loads(text) if text.startswith("[") else [text]
                item.update({k: _cell(k, item[k]) for k in SETTING_KEYS if k in item})
            except (ValueError, json.JSONDecodeError) as e:
                rows.append(Row(n, item.get("id", str(n)), "", "", error=f"row {n}: {e}"))
                continue
            rows.append(_row(n, item, base))
        return rows


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
        raise ValueError(f"{name} {text!r} must be a {'whole number' if kind is int else 'number'}") from None


def _row(n: int, item, base: Path) -> Row:
    if not isinstance(item, dict):
        return Row(n, str(n), "", "", error=f"row {n} is not an object with image and prompt")
    rid = str(item.get("id", n))
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
    for e in edits:
        if "mask" in e and isinstance(e["mask"], str):
            e["mask"] = str(base / e["mask"])
    return Row(n, rid, str(base / image), prompt, {k: item[k] for k in SETTING_KEYS if k in item}, edits)


def _pie_rows(path: Path, images_dir: Path) -> list[Row]:
    from nulltext.pie_bench import PieBenchError, read_mapping

    try:
        entries = read_mapping(path)
    except PieBenchError as e:
        raise ManifestError(str(e)) from None
    return [Row(n, e.key, str(images_dir / e.image_path), e.source_prompt,
                edits=[{"target": e.target_prompt, "blend_words": e.blend_words}])
            for n, e in enumerate(entries, 1)]


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_row(model: Model, row: Row, base: InversionConfig) -> Task:
    """Check a row (settings, prompts, readable image, edit options) and name its outputs by content."""
    from nulltext.images import load_image

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
        model.check_prompt(e["target"])
        EditConfig(**_edit_options(options))  # the options' own checks
        mask = e.get("mask")
        edit_key = _digest(inversion_key, e["target"], options, _file_digest(mask) if mask else None)[:12]
        edits.append({"target": e["target"], "options": options, "mask": mask,
                      "path": f"{EDITS}/{inversion_key}-{edit_key}.png"})
    key = _digest(inversion_key, [e["path"] for e in edits])[:24]
    return Task(row.number, row.id, row.image, row.prompt, key, inversion_key, dataclasses.asdict(config),
                list(size), f"{INVERSIONS}/{inversion_key}.nti", edits)


def _edit_options(options: dict) -> dict:
    """EditConfig keyword arguments from JSON options (lists where it takes tuples)."""
    out = dict(options)
    for name in ("cross_replace", "self_replace"):
        if isinstance(out.get(name), list):
            out[name] = tuple(out[name])
    if isinstance(out.get("word_cross_replace"), dict):
        out["word_cross_replace"] = {k: tuple(v) if isinstance(v, list) else v for k, v in out["word_cross_replace"].items()}
    return out


def read_results(out: Path) -> dict[str, dict]:
    """The latest results line per row key; a torn last line (a killed write) is ignored."""
    latest = {}
    try:
        lines = (Path(out) / RESULTS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return latest
    for line in lines:
        try:
            record = json.loads(line)
            latest[record["key"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return latest


def is_finished(task: Task, out: Path, results: dict[str, dict]) -> bool:
    record = results.get(task.key)
    return (record is not None and record.get("status") == "done" and (out / task.inversion).is_file()
            and all((out / e["path"]).is_file() for e in task.edits))


def append_result(out: Path, record: dict) -> None:
    """One results line, appended in one write and synced: a kill leaves it whole or absent (or torn, then ignored)."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    fd = os.open(out / RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Running tasks (the local loop and each Ray actor)


def run_tasks(model: Model, tasks: list[dict], out: str | Path, redo: bool = False,
              on_step: Callable | None = None) -> list[dict]:
    """Invert (in batches of one setting) and edit the tasks; one results record per task, never raising for a row.

    An existing .nti is reused unless `redo`; an existing edit PNG is kept unless `redo`.
    """
    import numpy as np
    import torch

    from nulltext.batch_inversion import invert_batch
    from nulltext.images import load_image, to_tensor
    from nulltext.inversion_file import load_inversion, save_inversion

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
    from nulltext.editing import edit, reconstruct
    from nulltext.images import load_mask, save_png, to_pil
    from nulltext.metrics import psnr

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
    text = " ".join(str(e).split())
    from nulltext.errors import USER_ERRORS

    known = isinstance(e, (*USER_ERRORS, ManifestError))
    return text if known and text else f"{type(e).__name__}: {text}" if text else type(e).__name__


def _failed(task: Task, e: BaseException) -> dict:
    return _record(task, "failed", error=one_line(e))


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class RunSummary:
    rows: int
    done: int  # rows finished by this run
    skipped: int  # rows finished by an earlier run (or repeating a row of this manifest)
    failed: int
    mean_psnr: float | None  # over every finished row of the manifest
    seconds: float
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row number, error)

    def table(self) -> str:
        psnr = "—" if self.mean_psnr is None else f"{self.mean_psnr:.2f} dB"
        lines = ["| rows | done | skipped | failed | mean PSNR | time |", "|---|---|---|---|---|---|",
                 f"| {self.rows} | {self.done} | {self.skipped} | {self.failed} | {psnr} | {self.seconds:.1f} s |"]
        lines += [f"row {n}: {error}" for n, error in self.failures]
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


def plan_run(model: Model, rows: list[Row], out: Path, config: BatchConfig
             ) -> tuple[list[Task], list[dict], list[dict]]:
    """(tasks to run, records of rows that failed planning, the results records of rows already finished)."""
    results = read_results(out)
    tasks, failed, finished, seen = [], [], [], set()
    for row in rows:
        try:
            task = plan_row(model, row, config.inversion)
        except Exception as e:  # noqa: BLE001 - a bad row is recorded, the run goes on
            failed.append({"key": f"row-{row.number}-{_digest(row.image, row.prompt)[:12]}", "row": row.number,
                           "id": row.id, "image": row.image, "prompt": row.prompt, "status": "failed",
                           "error": one_line(e), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            continue
        if task.key in seen:  # the same content twice: run once, count the copy as skipped
            finished.append({"key": task.key, "row": row.number, "status": "duplicate"})
            continue
        seen.add(task.key)
        if not config.redo and is_finished(task, out, results):
            finished.append(results[task.key])
        else:
            tasks.append(task)
    return tasks, failed, finished


def run_manifest(model: Model, rows: list[Row], out: str | Path, config: BatchConfig | None = None,
                 executor: Executor | None = None, on_row: Callable[[dict], None] | None = None,
                 on_step: Callable | None = None, on_plan: Callable[[int], None] | None = None) -> RunSummary:
    """Run every unfinished row: plan, execute (locally in batches of K, or by `executor`), log results.jsonl.

    `on_plan(n)` hears how many rows this run will report; `on_row(record)` each results record as it is
    logged; `on_step(StepReport)` each outer step of the batch being inverted (local runs).
    """
    config = config or BatchConfig()
    out = Path(out)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / INVERSIONS, out / EDITS):
        remove_stale_temps(folder)  # temp files of a killed run
    tasks, failed, finished = plan_run(model, rows, out, config)
    records: list[dict] = []
    if on_plan is not None:
        on_plan(len(failed) + len(tasks))  # the rows this run will report

    def record(r: dict) -> None:
        append_result(out, r)
        records.append(r)
        if on_row is not None:
            on_row(r)

    for r in failed:
        record(r)
    if executor is None:
        for batch in _batches(tasks, config.batch_size):
            for r in run_tasks(model, [dataclasses.asdict(t) for t in batch], out, config.redo, on_step):
                record(r)
    else:
        executor([dataclasses.asdict(t) for t in tasks], record)
    for folder in (out / INVERSIONS, out / EDITS):
        remove_stale_temps(folder)  # of workers killed during this run (Ray retried their rows)
    done = [r for r in records if r["status"] == "done"]
    psnrs = [r["psnr"] for r in done + finished if r.get("psnr") is not None]
    bad = [r for r in records if r["status"] != "done"]
    return RunSummary(len(rows), len(done), len(finished), len(bad), sum(psnrs) / len(psnrs) if psnrs else None,
                      time.perf_counter() - start, sorted((r["row"], r.get("error", "")) for r in bad))


def _batches(tasks: list[Task], size: int) -> Iterable[list[Task]]:
    """Batches of at most `size` tasks of one inversion setting, in manifest order within each setting."""
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(json.dumps(t.settings, sort_keys=True), []).append(t)
    for group in groups.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]

"""Running a manifest: the work of a batch of rows (`run_tasks`, one plain function of a loaded model
and JSON-ready tasks, called by the local loop and by each Ray Data actor) and the whole run (`run_manifest`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nulltext.batch.manifest import Row
from nulltext.batch.plan import BatchConfig, Task, _batches, _edit_options, _failed, _record, plan_run
from nulltext.batch.results import EDITS, INVERSIONS, append_result, prepare_output
from nulltext.model import Model
from nulltext.io.outputs import remove_stale_temps
from nulltext.editing.config import EditConfig
from nulltext.progress import Progress


# ---------------------------------------------------------------------------------------------
# Running tasks (the local loop and each Ray actor)


def run_tasks(model: Model, tasks: list[dict], out: str | Path, redo: bool = False,
              on_step: Progress | None = None) -> list[dict]:
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

    from nulltext.editing.from_inversion import edit, reconstruct
    from nulltext.io.images import load_mask, output_metadata, save_png, to_pil
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
        meta = output_metadata(model, task.prompt, "edit", target_prompt=e["target"], edit_options=e["options"],
                               inversion=task.inversion, row_id=task.id)
        if e["mask"]:
            meta["blend_mask"] = e["mask"]
        save_png(to_pil(result.images[1:])[0], path, meta, force=True)
    return _record(task, "done", psnr=value, inversion=task.inversion, inversion_reused=reused,
                   edits=[e["path"] for e in task.edits], inversion_seconds=round(seconds, 3),
                   edit_seconds=round(time.perf_counter() - start, 3),
                   iterations=sum(inversion.inner_iterations))


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

Executor = Callable[[list[dict], Callable[[dict], None]], None]  # (tasks, on_result) → runs them all


def run_manifest(model: Model, rows: list[Row], out: str | Path, config: BatchConfig | None = None,
                 executor: Executor | None = None, on_row: Callable[[dict], None] | None = None,
                 on_step: Progress | None = None, on_plan: Callable[[int], None] | None = None) -> RunSummary:
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

"""Manifest runs: invert and edit a whole data set, resumably, one bad row never stopping the rest.

A manifest is JSONL (one object a line), CSV (a header row) or a PIE-Bench `mapping_file.json`. Each
row has `image` (a path, relative to the manifest's folder), `prompt` (the source caption), optional
`id`, optional `edits` (a list of target captions, or of objects `{"target": …, EditConfig options,
"mask": PATH}`; in CSV a JSON list or one target caption) and optional inversion settings named as
`InversionConfig`'s fields (`num_steps`, `guidance_scale`, `optimizer`, `trials` (secant) or `inner_steps`
and `learning_rate` (Adam), `method`, …).

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

The modules, lowest first: `manifest` (reading rows, the data checks), `results` (OUT/ and results.jsonl),
`plan` (content keys, output names, resume, results records), `run` (`run_tasks`, `run_manifest`), and
`ray_data` (the Ray Data executor).
"""

from __future__ import annotations

from nulltext.batch.manifest import MAX_DEPTH, MAX_TEXT, ManifestError, Row, read_manifest
from nulltext.batch.plan import BatchConfig, Plan, Task, plan_run
from nulltext.batch.results import RESULTS, append_result, prepare_output, read_results
from nulltext.batch.run import RunSummary, run_manifest, run_tasks

__all__ = ["MAX_DEPTH", "MAX_TEXT", "RESULTS", "BatchConfig", "ManifestError", "Plan", "Row", "RunSummary", "Task",
           "append_result", "plan_run", "prepare_output", "read_manifest", "read_results", "run_manifest", "run_tasks"]

"""`nulltext batch`: a manifest's good and bad rows, content-hashed outputs, resume, and a SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nulltext.batch import read_manifest
from nulltext.bundled import data
from nulltext.cli import main
from nulltext.editing import reconstruct
from nulltext.io.images import read_png_metadata, to_pil
from nulltext.inversion.file import load_inversion
from nulltext.evaluation.metrics import psnr
from nulltext.io.outputs import TEMP_SUFFIX
from nulltext.evaluation.pie_bench import encode_mask

FAST = {"num_steps": 4, "trials": 2}


def _photos(folder: Path, n: int, size: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        image, caption = data.sample("test", i, size)
        image.save(folder / f"p{i}.png")
        out.append((f"p{i}.png", caption))
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _run(manifest: Path, out: Path, model_dir, *extra) -> int:
    return main(["batch", str(manifest), "-o", str(out), "--model", str(model_dir), "-q", *map(str, extra)])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("manifest")
    (p0, c0), (p1, c1) = _photos(folder, 2, tiny.default_size[0])
    (folder / "broken.png").write_bytes(b"not an image")
    rows = [
        {"id": "first", "image": p0, "prompt": c0, **FAST,
         "edits": [c0.replace(c0.split()[1], "green"), {"target": c0, "reweight": {c0.split()[2]: 2.0}}]},
        {"image": p1, "prompt": c1, **FAST},
        {"image": "broken.png", "prompt": "a red circle", **FAST},
        {"image": p1, "prompt": "", **FAST},
        {"image": p1, "prompt": c1, "num_steps": 4, "trials": 2, "guidance_scale": 1e30},
        {"image": p0, "prompt": c0, "colour": "red"},
        {"image": p1, "prompt": c1, **FAST, "edits": [{"target": c1, "blend_words": ["zebra"]}]},
    ]
    return _write_jsonl(folder / "rows.jsonl", rows), rows


def test_good_and_bad_rows_outputs_results_and_exit_code(manifest, tiny, tiny_dir, tmp_path):
    path, rows = manifest
    out = tmp_path / "out"
    assert _run(path, out, tiny_dir, "--batch-size", 2) == 1  # some rows failed
    latest = {r["row"]: r for r in _lines(out)}
    assert sorted(latest) == list(range(1, len(rows) + 1))
    status = {n: r["status"] for n, r in latest.items()}
    assert status == {1: "done", 2: "done", 3: "failed", 4: "failed", 5: "failed", 6: "failed", 7: "failed"}
    assert "not a recognised image format" in latest[3]["error"]
    assert "prompt is empty" in latest[4]["error"]
    assert "loss became inf" in latest[5]["error"]
    assert "unknown field 'colour'" in latest[6]["error"]
    assert "'zebra'" in latest[7]["error"]  # the edit failed after the inversion was made: that is kept
    assert all("\n" not in r.get("error", "") for r in latest.values())
    first = latest[1]
    inversion = load_inversion(out / first["inversion"], tiny)
    assert inversion.prompt == rows[0]["prompt"] and inversion.config.num_steps == 4
    rec = to_pil(reconstruct(tiny, inversion))[0]
    assert first["psnr"] == pytest.approx(psnr(rec, Image.fromarray(inversion.photo.numpy())), abs=1e-9)
    assert len(first["edits"]) == 2 and first["edits"][0] != first["edits"][1]
    meta = read_png_metadata(out / first["edits"][1])
    assert meta["target_prompt"] == rows[0]["prompt"] and json.loads(meta["edit_options"])["reweight"]
    # rows 2 and 7 share the photo, prompt and settings: one inversion file (named by content) for both
    assert sorted(p.name for p in (out / "inversions").iterdir()) == \
        sorted(Path(latest[n]["inversion"]).name for n in (1, 2))

    # a rerun skips the finished rows and retries the failed ones; nothing is written twice
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.name != "results.jsonl"}
    assert _run(path, out, tiny_dir) == 1
    lines = _lines(out)
    assert sum(r["status"] == "done" for r in lines) == 2
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # changing only the edits reuses the inversion
    rows[0]["edits"] = [rows[0]["prompt"].replace(rows[0]["prompt"].split()[1], "blue")]
    _write_jsonl(path.with_name("edited.jsonl"), rows[:2])
    assert _run(path.with_name("edited.jsonl"), out, tiny_dir) == 0
    new = _lines(out)[-1]
    assert new["row"] == 1 and new["inversion_reused"] and new["inversion"] == first["inversion"]
    assert (out / first["inversion"]).stat().st_mtime_ns == before[out / first["inversion"]]
    assert (out / new["edits"][0]).is_file() and new["edits"][0] not in first["edits"]

    # a CSV of the same rows has the same content keys: all finished
    csv = path.with_name("rows.csv")
    csv.write_text("image,prompt,num_steps,trials,edits\n"
                   f"{rows[1]['image']},{rows[1]['prompt']},4,2,\n")
    n = len(_lines(out))
    assert _run(csv, out, tiny_dir) == 0 and len(_lines(out)) == n


def test_pie_bench_mapping_file_is_a_manifest(tmp_path):
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:200, 100:200] = True
    entry = {"image_path": "0_random/000.jpg", "original_prompt": "a [cat] on a mat", "editing_prompt": "a [dog] on a mat",
             "editing_instruction": "", "editing_type_id": "1", "blended_word": "cat dog", "mask": encode_mask(mask)}
    (tmp_path / "mapping_file.json").write_text(json.dumps({"000": entry}))
    [row] = read_manifest(tmp_path / "mapping_file.json")
    assert (row.id, row.prompt, row.image) == ("000", "a cat on a mat", os.path.abspath(tmp_path / "annotation_images/0_random/000.jpg"))
    assert row.edits == [{"target": "a dog on a mat", "blend_words": ["cat", "dog"]}]


def test_sigkill_mid_run_then_rerun_completes_exactly_the_missing_rows(tiny, tiny_dir, tmp_path):
    photos = _photos(tmp_path, 4, tiny.default_size[0])
    path = _write_jsonl(tmp_path / "rows.jsonl", [{"image": p, "prompt": c, "num_steps": 6, "trials": 3,
                                                  "early_stop": 0.0, "edits": [c]} for p, c in photos])
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "nulltext.cli", "batch", str(path), "-o", str(out), "--model",
                                str(tiny_dir), "-q", "-k", "1"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and len(results.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {r["key"]: r for r in _lines(out)}
    assert 2 <= len(done_before) < 4  # killed mid-run
    kept = {p: p.stat().st_mtime_ns for r in done_before.values() for p in [out / r["inversion"], *(out / e for e in r["edits"])]}

    assert _run(path, out, tiny_dir) == 0
    lines = _lines(out)
    assert len(lines) == 4 and len({r["key"] for r in lines}) == 4  # every row exactly once
    assert all(r["status"] == "done" for r in lines)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished rows were not redone
    assert not [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]  # no half files …
    assert {p.relative_to(out).as_posix() for p in out.glob("*/*")} == \
        {path for r in lines for path in [r["inversion"], *r["edits"]]}  # … and nothing unaccounted for
    for r in lines:
        assert load_inversion(out / r["inversion"], tiny).config.num_steps == 6
        assert Image.open(out / r["edits"][0]).size == tiny.default_size

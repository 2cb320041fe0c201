"""Issue #25, the batch half: hostile manifest rows, files that are not files, damaged results.jsonl,
unwritable outputs, odd PIE-Bench mapping files, BOMs and duplicates. A bad row is always its own
one-line error in results.jsonl and the run goes on; a run that cannot start says so in one line.

One section per class of the issue, then one end-to-end run of every class through the CLI.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nulltext.batch import (MAX_DEPTH, MAX_TEXT, RESULTS, BatchConfig, append_result,
                            read_manifest, read_results, run_manifest)
from nulltext.cli import main
from nulltext.io.images import ImageError, load_image, load_mask
from nulltext.io.outputs import TEMP_SUFFIX
from nulltext.evaluation.pie_bench import PieBenchError, encode_mask, read_mapping
from test_batch import _photos

FAST = {"num_steps": 2, "trials": 1}
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Helpers


def _jsonl(path: Path, lines: list, bom: bool = False) -> Path:
    """A JSONL manifest; each line an object (json.dumps: lone surrogates become \\ud800 escapes) or raw bytes."""
    body = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + body)
    return path


def _records(out: Path) -> tuple[list[dict], int]:
    """The parseable records of results.jsonl and how many lines are not (read as bytes, as the run does)."""
    records, bad = [], 0
    for line in (out / RESULTS).read_bytes().split(b"\n"):
        if line.strip():
            try:
                records.append(json.loads(line.decode("utf-8")))
            except ValueError:
                bad += 1
    return records, bad


def _listing(folder: Path, skip: Path | None = None) -> dict[str, int]:
    """Every path under `folder` (but `skip`) with its size (0 for what is not a regular file)."""
    return {str(p.relative_to(folder)): (p.lstat().st_size if p.is_file() and not p.is_symlink() else 0)
            for p in sorted(folder.rglob("*")) if skip is None or skip not in (p, *p.parents)}


@contextlib.contextmanager
def _fifo(path: Path):
    """A named pipe with a writer waiting: code that wrongly opened it to read would get EOF, not hang forever."""
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: os.close(os.open(path, os.O_WRONLY)), daemon=True)
    writer.start()
    try:
        yield path
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # held open until the writer has come and gone
        writer.join()
        os.close(reader)


def _stdout_is_open() -> bool:
    try:
        os.fstat(1)
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("photos")
    return folder, _photos(folder, 2, tiny.default_size[0])


# ---------------------------------------------------------------------------------------------
# 1. A bad row is data to refuse, never the run's end


def test_hostile_fields_are_row_errors_and_the_other_rows_are_read(photos):
    folder, [(p0, c0), (p1, c1)] = photos
    good = {"image": p0, "prompt": c0, **FAST}
    lines = [
        good,
        {**good, "prompt": "a red \ud800 circle"},  # 2: a lone surrogate (JSON's \ud800 escape)
        {**good, "id": "x\udfffy"},  # 3
        b'{"image": "p\xff.png", "prompt": "a red circle"}',  # 4: a file name that is not UTF-8
        b'{"image": "p0.png", "prompt": "a red circle", "num_steps": ' + b"7" * 5000 + b"}",  # 5: past int(str)'s limit
        b'{"image": "p0.png", "prompt": "a", "edits": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # 6: RecursionError
        {**good, "edits": [{"target": c0, "mask": 1}]},  # 7: open(1) would read and close stdout
        {**good, "prompt": "a " * 100_000},  # 8: 200 KB of prompt
        {**good, "edits": [{"target": c0, "reweight": {"a": [[[[[[1]]]]]]}}]},  # 9: deeper than MAX_DEPTH, parseable
        {**good, "num_steps": 10**30},  # 10: a number JSON reads but no setting can hold
        {**good, "id": 7},  # 11: a numeric id is fine
        {**good, "id": [1]},  # 12
        {**good, "image": 5},  # 13
        {"image": p1, "prompt": c1, "id": "last"},  # 14: still read after all of the above
    ]
    rows = read_manifest(_jsonl(folder / "hostile.jsonl", lines))
    assert [r.number for r in rows] == list(range(1, 15))
    errors = {r.number: r.error for r in rows if r.error}
    expected = {
        2: "prompt is not valid UTF-8 (U+D800 at character 7)",
        3: "id is not valid UTF-8 (U+DFFF at character 2)",
        4: "image is not valid UTF-8 (byte 0xff at character 2)",
        5: "line 5 holds a number of thousands of digits",
        6: "line 6 is nested too deeply",
        7: "edits[0].mask must be the path of a mask image, got 1",
        8: f"prompt is 200000 characters long; at most {MAX_TEXT}",
        9: f"nested more than {MAX_DEPTH} levels deep",
        10: "num_steps is a number of 100 bits; at most 63",
        12: "id must be text or a whole number, got list",
        13: "has no image path",
    }
    assert sorted(errors) == sorted(expected)
    for n, needle in expected.items():
        assert needle in errors[n], errors[n]
        assert "\n" not in errors[n] and len(errors[n]) < 400 and " — " in errors[n]  # one line with its fix
        errors[n].encode("utf-8")  # printable: no lone surrogate copied into the message
    assert rows[10].id == "7" and rows[13].id == "last" and rows[13].prompt == c1
    assert rows[2].id == "3"  # an id that cannot be written is replaced by the row's number


def test_edit_options_and_masks_are_checked_before_any_inversion(photos, tiny, tmp_path):
    folder, [(p0, c0), _] = photos
    Image.new("L", (16, 16), 255).save(folder / "small_mask.png")
    row = {"image": p0, "prompt": c0, **FAST}
    rows = read_manifest(_jsonl(folder / "options.jsonl", [
        {**row, "edits": [{"target": c0, "reweight": ["cat", 2]}]},
        {**row, "edits": [{"target": c0, "blend_words": "cat"}]},
        {**row, "edits": [{"target": c0, "word_cross_replace": 0.5}]},
        {**row, "edits": [{"target": c0, "mask": "small_mask.png"}]},  # 16×16 for a 32×32 photo
    ]))
    summary = run_manifest(tiny, rows, tmp_path / "out", BatchConfig())
    assert (summary.done, summary.failed) == (0, 4)
    errors = [error for _, error in summary.failures]
    assert "edit option reweight must be like {\"cat\": 2}, got [\"cat\", 2]" in errors[0]
    assert "edit option blend_words must be like [\"cat\"], got \"cat\"" in errors[1]
    assert "edit option word_cross_replace must be like" in errors[2]
    assert "mask is 16x16 pixels" in errors[3]
    assert not list((tmp_path / "out" / "inversions").iterdir())  # no inversion was run for any of them


def test_csv_with_a_bom_a_200kb_cell_and_bytes_that_are_not_utf8(photos):
    folder, [(p0, c0), (p1, c1)] = photos
    path = folder / "excel.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"".join(line + b"\r\n" for line in [
        b"id,image,prompt,num_steps,trials",
        f"one,{p0},{c0},2,1".encode(),
        b"big," + p0.encode() + b"," + b"x" * 200_000 + b",2,1",  # over the csv module's 131072 field limit
        f"after,{p1},{c1},2,1".encode(),
        b"latin,caf\xe9.png," + c0.encode() + b",2,1",
        b"digits," + p0.encode() + b"," + c0.encode() + b"," + b"9" * 5000 + b",1",
        b"edits," + p0.encode() + b"," + c0.encode() + b",2,1",
    ]))
    rows = read_manifest(path)
    assert [r.id for r in rows] == ["one", "3", "after", "latin", "digits", "edits"]
    assert [r.error is None for r in rows] == [True, False, True, False, False, True]
    assert "row 3 is not valid CSV (field larger than field limit" in rows[1].error
    assert "image is not valid UTF-8 (byte 0xe9 at character 4)" in rows[3].error
    assert f"num_steps is 5000 characters long; at most {MAX_TEXT}" in rows[4].error
    assert rows[0].settings == FAST and rows[2].image == str(folder / p1)


def test_a_bom_in_a_jsonl_manifest_is_skipped(photos):
    folder, [(p0, c0), _] = photos
    [row] = read_manifest(_jsonl(folder / "bom.jsonl", [{"image": p0, "prompt": c0}], bom=True))
    assert row.error is None and row.prompt == c0


# ---------------------------------------------------------------------------------------------
# 2. Photos and masks are regular files, checked before they are opened


@pytest.mark.parametrize("kind, needle", [
    ("fifo", "it is a named pipe (FIFO), not a file"),
    ("device", "it is a device, not a file"),
    ("folder", "it is a directory"),
    ("descriptor", "a path must be text, not int"),
])
def test_only_regular_files_are_read_as_photos_or_masks(kind, needle, tmp_path):
    with contextlib.ExitStack() as stack:
        path = {"fifo": lambda: stack.enter_context(_fifo(tmp_path / "pipe.png")), "device": lambda: "/dev/zero",
                "folder": lambda: tmp_path, "descriptor": lambda: 1}[kind]()
        for read in (lambda p: load_image(p, 32), lambda p: load_mask(p, (32, 32))):
            with pytest.raises(ImageError) as e:
                read(path)
            text = str(e.value)
            assert needle in text and text.count("cannot read image") == 1 and "\n" not in text, text
            assert text.endswith("pass the path of an image file") or text.endswith('e.g. "photo.png"'), text
    assert _stdout_is_open()


# ---------------------------------------------------------------------------------------------
# 3. results.jsonl: torn lines, bytes cut inside a character, records no writer could write


def test_any_record_is_written_as_one_parseable_line(tmp_path):
    append_result(tmp_path, {"key": "a", "row": 1, "status": "failed", "error": "x", "id": "\ud800"})
    append_result(tmp_path, {"key": "b", "row": 2, "status": "failed", "error": "y", "n": 10**5000})
    append_result(tmp_path, {"key": "c", "row": 3, "status": "done", "prompt": "café", "edits": ["e.png"],
                             "bad": object()})
    (tmp_path / RESULTS).read_bytes().decode("utf-8")  # the file stays UTF-8
    records, bad = _records(tmp_path)
    assert bad == 0 and [r["key"] for r in records] == ["a", "b", "c"]
    assert records[0]["id"] == "\ud800"  # kept, as JSON's escape
    assert records[1]["n"] == "<a int JSON cannot hold>" and records[1]["error"] == "y"
    assert records[2]["prompt"] == "café" and records[2]["edits"] == ["e.png"]


def test_torn_and_undecodable_results_lines_never_stop_a_rerun(photos, tiny, tmp_path):
    folder, [(p0, c0), (p1, c1)] = photos
    rows = read_manifest(_jsonl(folder / "two.jsonl", [{"image": p0, "prompt": c0, **FAST},
                                                       {"image": p1, "prompt": c1, **FAST, "edits": [c1]}]))
    out = tmp_path / "out"
    first = run_manifest(tiny, rows, out, BatchConfig(batch_size=2))
    assert (first.done, first.failed, first.warnings) == (2, 0, [])
    lines = (out / RESULTS).read_bytes().split(b"\n")
    # row 2's line torn inside "é" (a killed write of a longer record), with no newline after it
    (out / RESULTS).write_bytes(lines[0] + b"\n" + b'{"key": "zzz", "prompt": "caf\xc3')
    assert read_results(out).unreadable == 1 and len(read_results(out).latest) == 1

    summary = run_manifest(tiny, rows, out, BatchConfig(batch_size=2))
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 0)  # row 2 redone, row 1 kept
    assert "torn line" in summary.warnings[0] and "1 unreadable line" in summary.warnings[1]
    records, bad = _records(out)
    assert bad == 1 and [r["row"] for r in records] == [1, 2]  # the fragment is a line of its own
    assert all(r["status"] == "done" for r in records)
    third = run_manifest(tiny, rows, out, BatchConfig())
    assert (third.done, third.skipped, third.failed) == (0, 2, 0)


# ---------------------------------------------------------------------------------------------
# 4. An output that cannot be written is found before the model loads


@pytest.mark.parametrize("where, needle", [
    ("out_is_a_file", "it is a file, not a folder"),
    ("under_a_file", "a part of the path is a file, not a folder"),
    ("inversions_is_a_file", "it is a file, not a folder"),
    ("results_is_a_folder", "it is a folder"),
    ("results_is_a_fifo", "it is not a regular file"),
])
def test_unwritable_output_is_one_line_before_any_work(where, needle, photos, tmp_path, capsys, monkeypatch):
    folder, [(p0, c0), _] = photos
    manifest = _jsonl(tmp_path / "rows.jsonl", [{"image": str(folder / p0), "prompt": c0, **FAST}])
    (tmp_path / "a_file").write_text("keep me")
    out = {"out_is_a_file": tmp_path / "a_file", "under_a_file": tmp_path / "a_file" / "out"}.get(where, tmp_path / "out")
    if where == "inversions_is_a_file":
        out.mkdir()
        (out / "inversions").write_text("not a folder")
    elif where == "results_is_a_folder":
        (out / RESULTS).mkdir(parents=True)
    elif where == "results_is_a_fifo":
        out.mkdir()
        os.mkfifo(out / RESULTS)
    monkeypatch.setattr("nulltext.model.load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    before = _listing(tmp_path)
    code = main(["batch", str(manifest), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("nulltext: error: ") and needle in err, err
    assert "write elsewhere with -o" in err and "Traceback" not in err
    created = set(_listing(tmp_path)) - set(before)  # at most the empty output folders themselves
    assert all(not (tmp_path / p).is_file() for p in created) and (tmp_path / "a_file").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# 5. PIE-Bench mapping files that break the format


def _pie_entry(**changes) -> dict:
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:200, 100:200] = True
    entry = {"image_path": "0_random/000.jpg", "original_prompt": "a [cat] on a mat", "editing_prompt": "a [dog] on a mat",
             "editing_instruction": "", "editing_type_id": "1", "blended_word": "cat dog", "mask": encode_mask(mask)}
    return {**entry, **changes}


def test_pie_bench_entries_that_break_the_format_are_named_row_errors(tmp_path):
    mapping = {"000000000001": _pie_entry(blended_word=None), "000000000002": _pie_entry(blended_word=["cat", "dog"]),
               "000000000003": _pie_entry(original_prompt=None), "000000000004": ["not", "an", "entry"],
               "000000000005": _pie_entry(mask=[1, "2"]), "000000000006": _pie_entry()}
    path = tmp_path / "mapping_file.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps(mapping).encode())
    rows = read_manifest(path)
    assert [r.id for r in rows] == list(mapping)
    assert rows[0].error is None and rows[0].edits == [{"target": "a dog on a mat", "blend_words": []}]  # null: no blend
    assert rows[5].error is None and rows[5].edits[0]["blend_words"] == ["cat", "dog"]
    assert rows[1].error.startswith("mapping_file.json entry '000000000002': blended_word must be a string like "
                                    "'cat dog'") and "got list" in rows[1].error
    assert rows[2].error.startswith("mapping_file.json entry '000000000003': original_prompt must be a string")
    assert rows[3].error.startswith("mapping_file.json entry '000000000004' is a JSON list; it must be an object")
    assert rows[4].error.startswith("mapping_file.json entry '000000000005': mask must be a list of [start, length]")
    with pytest.raises(PieBenchError, match="entry '000000000002': blended_word"):  # the bench reads it strictly
        read_mapping(path)
    assert [e.blend_words for e in read_mapping(path, types=["1"], limit=1)] == [[]]


@pytest.mark.parametrize("content, needle", [
    (b"[1, 2]", "holds a JSON list; it must be an object of id"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a": ' + b"1" * 5000 + b"}", "holds a number of thousands of digits"),
    (b'{"a": ', "is not JSON (Expecting value at line 1 column 7)"),
    (b'{"a": "caf\xe9"}', "is not UTF-8 text"),
])
def test_a_mapping_file_that_is_not_one_is_one_line_exit_2(content, needle, tmp_path, capsys):
    path = tmp_path / "mapping_file.json"
    path.write_bytes(content)
    code = main(["batch", str(path), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err and "mapping_file.json" in err, err


# ---------------------------------------------------------------------------------------------
# 7. Every row has a line: duplicates too, once, without disturbing resume


def test_duplicate_rows_get_their_own_line_once(photos, tiny, tmp_path):
    folder, [(p0, c0), (p1, c1)] = photos
    a, b = {"image": p0, "prompt": c0, **FAST}, {"image": p1, "prompt": c1, **FAST}
    rows = read_manifest(_jsonl(folder / "dupes.jsonl", [a, b, {**a, "id": "copy"}, b]))
    out = tmp_path / "out"
    summary = run_manifest(tiny, rows, out, BatchConfig(batch_size=2))
    assert (summary.rows, summary.done, summary.skipped, summary.failed) == (4, 2, 2, 0)
    records, _ = _records(out)
    assert sorted(r["row"] for r in records) == [1, 2, 3, 4]
    dupes = {r["row"]: r for r in records if r["status"] == "duplicate"}
    assert {n: (r["duplicate_of"], r["id"]) for n, r in dupes.items()} == {3: (1, "copy"), 4: (2, "4")}
    # a rerun: nothing to do, nothing logged again, the duplicates still counted as skipped
    again = run_manifest(tiny, rows, out, BatchConfig())
    assert (again.done, again.skipped, again.failed) == (0, 4, 0) and len(_records(out)[0]) == 4


# ---------------------------------------------------------------------------------------------
# 8. The ray extra carries what `--ray ray://HOST:10001` needs


def test_the_ray_extra_includes_ray_client():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [ray] = extras["ray"]
    assert ray.startswith("ray[data,client]>=")
    assert "client" in importlib.metadata.metadata("ray").get_all("Provides-Extra")


# ---------------------------------------------------------------------------------------------
# 9. One run with every class of hostile row, through the CLI in its own process


def test_a_run_with_every_hostile_class_finishes_the_good_rows(tiny, tiny_dir, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (p0, c0), (p1, c1) = _photos(folder, 2, tiny.default_size[0])
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe.png")
    good = [{"id": "good-0", "image": p0, "prompt": c0, **FAST, "edits": [c0]},
            {"id": "good-1", "image": p1, "prompt": c1, **FAST}]
    hostile = [  # (row, what its error says)
        ({"id": "surrogate", "image": p0, "prompt": "a \ud800 circle", **FAST}, "U+D800"),
        (b'{"id": "bytes", "image": "p\xff.png", "prompt": "a red circle"}', "byte 0xff"),
        (b'{"id": "digits", "image": "p0.png", "prompt": "a", "num_steps": ' + b"1" * 5000 + b"}", "thousands of digits"),
        (b'{"id": "deep", "image": "p0.png", "prompt": "a", "edits": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "nested too deeply"),
        ({"id": "long", "image": p0, "prompt": "x" * 200_000}, "200000 characters"),
        ({"id": "fd-mask", "image": p1, "prompt": c1, **FAST, "edits": [{"target": c1, "mask": 1}]}, "mask image, got 1"),
        ({"id": "fifo-mask", "image": p1, "prompt": c1, **FAST, "edits": [{"target": c1, "mask": "pipe.png"}]},
         "named pipe (FIFO)"),
        ({"id": "device", "image": "/dev/zero", "prompt": c0, **FAST}, "it is a device"),
        ({"id": "folder", "image": "sub", "prompt": c0, **FAST}, "it is a directory"),
    ]
    duplicate = {**good[0], "id": "again"}
    manifest = _jsonl(folder / "rows.jsonl", [good[0], *(row for row, _ in hostile), good[1], duplicate], bom=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULTS).write_bytes(b'{"key": "old", "status": "done", "prompt": "caf\xc3')  # torn inside a character
    before = _listing(tmp_path, skip=out)

    def run() -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        return subprocess.run([sys.executable, "-m", "nulltext.cli", "batch", str(manifest), "-o", str(out),
                               "--model", str(tiny_dir), "-q", "-k", "2"], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=900, cwd=tmp_path)

    n_rows = len(good) + len(hostile) + 1
    result = run()
    assert result.returncode == 1, result.stderr
    assert f"| {n_rows} | 2 | 1 | {len(hostile)} |" in result.stdout  # the summary, on a stdout still open
    assert f"results: {out / RESULTS}" in result.stdout
    assert "\nrow 2: prompt is not valid UTF-8" in result.stdout and "row 2: row 2" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert "torn line" in result.stderr and "1 unreadable line" in result.stderr
    records, bad = _records(out)
    assert bad == 1  # the old torn fragment, now a line of its own
    # every row once, by its id; a line that is not JSON at all by its line number
    assert sorted((r["row"], r["id"]) for r in records) == list(enumerate(
        ["good-0", "surrogate", "bytes", "4", "5", "long", "fd-mask", "fifo-mask", "device", "folder", "good-1", "again"],
        1))
    by_id = {r["id"]: r for r in records}
    for name in ("good-0", "good-1"):
        r = by_id[name]
        assert r["status"] == "done" and (out / r["inversion"]).is_file() and all((out / e).is_file() for e in r["edits"])
    assert len(by_id["good-0"]["edits"]) == 1
    assert by_id["again"]["status"] == "duplicate" and by_id["again"]["duplicate_of"] == 1
    errors = {r["row"]: r["error"] for r in records if r["status"] == "failed"}
    assert sorted(errors) == list(range(2, 2 + len(hostile)))
    for (row, needle), n in zip(hostile, range(2, 2 + len(hostile))):
        assert needle in errors[n] and "\n" not in errors[n] and "Traceback" not in errors[n], (n, errors[n])
        assert errors[n].count(" — ") == 1 and len(errors[n]) < 300, errors[n]  # one problem, one fix
    assert _listing(tmp_path, skip=out) == before  # nothing written outside OUT …
    assert not [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]  # … and no half file in it

    # a rerun: the good rows and the duplicate are skipped, the bad rows fail again, nothing else is logged
    again = run()
    assert again.returncode == 1 and f"| {n_rows} | 0 | 3 | {len(hostile)} |" in again.stdout, again.stdout
    records_after, _ = _records(out)
    assert len(records_after) == len(records) + len(hostile)
    assert {r["id"] for r in records_after[len(records):]} == {r["id"] for r in records if r["status"] == "failed"}

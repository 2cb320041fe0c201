"""OUT/ and its results.jsonl: the folders made and proved writable, the log read and appended.

results.jsonl is read as bytes, line by line: a torn line (even one cut inside a UTF-8 character) is
counted and skipped, and one torn at the end is closed with a newline before the next line is appended.
Each line is one appended, synced write, so a kill leaves it whole, absent or torn, never glued to the next.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nulltext.io.outputs import OutputError, probe_folder, write_error

RESULTS = "results.jsonl"
INVERSIONS, EDITS = "inversions", "edits"


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

"""Publishing output files: atomically, exclusively, and checked before the work starts.

Every file nulltext writes (.nti, PNGs, study tables and plots) goes through `publish`: the content is
written to a temporary file beside the target, named `.NAME.<pid>.<random>.nulltext-part`, then moved
into place in one step. Without `force` that step is exclusive (a hard link, which fails if the
target exists), so two runs writing the same name never silently replace each other's result. With
`force` it is a rename that replaces the target. A temporary file is removed on every failure; one
left behind by a killed process (SIGKILL, power loss) is removed by the next write into the same
folder once its process is gone (its pid is not alive on this machine) or it is older than
`STALE_AFTER` seconds (for folders shared between machines).

`check_outputs` finds, before minutes of work, what would make the final write fail: an existing
file without `force`, a target that is a folder, a parent that is a file, a folder that cannot be
written (probed by creating and removing a file). Every failure is one line, as an `OutputError`
(an `OSError`) or `OutputExistsError` (a `FileExistsError`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
import time
from nulltext.errors import NulltextError
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".nulltext-part"
STALE_AFTER = 24 * 3600.0  # seconds: a temp file this old is stale whatever its pid says

Writer = Callable[[Path], object]  # write(tmp_path): writes the whole content to tmp_path


class OutputError(NulltextError, OSError):
    """An output that cannot be written; one line naming the file, the reason and the fix."""


class OutputExistsError(OutputError, FileExistsError):
    """An output that exists (or appeared during the run) and is not overwritten without --force."""


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EFBIG: "the file is too large for this file system",
}


def _reason(error: OSError) -> str:
    reason = _REASONS.get(error.errno or 0) or (error.strerror or str(error) or type(error).__name__)
    return " ".join(str(reason).split())


def write_error(path: Path, error: OSError) -> OutputError:
    """A one-line OutputError for a failed write of `path`."""
    fix = ("free some space or write elsewhere with -o" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "write elsewhere with -o")
    out = OutputError(f"cannot write '{path}': {_reason(error)} — {fix}")
    out.errno = error.errno
    return out


def exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(f"'{path}' exists; pass --force to overwrite it, or -o to write elsewhere")


# ---------------------------------------------------------------------------------------------
# Temporary files


def temp_path(target: Path) -> Path:
    """A fresh, recognisable temporary name beside `target`."""
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but is not ours / not a pid we can ask about
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether `path` is a nulltext temp file whose writer is gone (or that is older than STALE_AFTER)."""
    name = path.name
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    parts = name[: -len(TEMP_SUFFIX)].split(".")
    try:
        pid, age = int(parts[-2]), (now or time.time()) - path.lstat().st_mtime
    except (IndexError, ValueError, OSError):
        return False
    return pid != os.getpid() and (not _pid_alive(pid) or age > STALE_AFTER)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temp files left in `folder` by killed runs; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        if entry.name.endswith(TEMP_SUFFIX) and is_stale(path, now):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Checks before the work


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def probe_folder(folder: Path) -> None:
    """Create and remove a file in `folder`: the one sure test that it can be written (root ignores modes)."""
    try:  # named like every temp file here (`.NAME.<pid>.<random>.nulltext-part`), so a killed run's is cleaned up
        fd, probe = tempfile.mkstemp(suffix=TEMP_SUFFIX, prefix=f".probe.{os.getpid()}.", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write into folder '{folder}': {_reason(e)} — write elsewhere with -o") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_outputs(paths: list[Path], force: bool = False) -> None:
    """Raise, before any work, for outputs that could not be written; creates nothing."""
    probed: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            raise OutputError(f"cannot write '{path}': it is a folder — pass a file name with -o")
        if os.path.lexists(path) and not force:
            raise exists_error(path)
        base = _nearest_existing(path.parent)
        if not base.is_dir():
            raise OutputError(f"cannot write '{path}': '{base}' is a file, not a folder — write elsewhere with -o")
        if base not in probed:
            probe_folder(base)
            probed.add(base)


# ---------------------------------------------------------------------------------------------
# Publishing


def _sibling(target: Path, n: int) -> Path:
    return target.with_name(f"{target.stem}.{n}{target.suffix}")


def _link_exclusive(temp: Path, target: Path) -> None:
    """Make `temp`'s content appear at `target` unless something is there; FileExistsError if it is."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
        # no hard links here (some FUSE/SMB/FAT mounts): claim the name exclusively, then fill it by rename
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.replace(temp, target)


def publish(path: str | os.PathLike[str], write: Writer, force: bool = False, keep_both: bool = False) -> Path:
    """Write a file atomically: write(tmp) beside `path`, then move it into place; returns `path`.

    force: replace an existing file. Otherwise an existing file is refused before writing, and a
    file that appears while writing is kept. keep_both: the caller checked (`check_outputs`) that
    `path` was free when its work began, so a file there now appeared meanwhile: keep it, publish
    this result beside it as NAME.2.EXT (the error names it), and raise OutputExistsError.
    """
    target = Path(path)
    if not force and not keep_both and os.path.lexists(target):
        raise exists_error(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(target, e) from e
    remove_stale_temps(target.parent)
    temp = temp_path(target)
    try:
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            mode = os.fstat(fd).st_mode & 0o777  # an ordinary new file's mode under the umask
            os.close(fd)
            write(temp)
            os.chmod(temp, mode)  # some writers (safetensors) replace the file with a 0600 one
            if force:
                os.replace(temp, target)
                return target
            try:
                _link_exclusive(temp, target)
                return target
            except FileExistsError:
                pass
        except OSError as e:
            if isinstance(e, OutputError):
                raise
            raise write_error(target, e) from e
        if not keep_both:
            raise exists_error(target)
        for n in range(2, 1000):
            try:
                _link_exclusive(temp, _sibling(target, n))
            except FileExistsError:
                continue
            raise OutputExistsError(f"'{target}' appeared while nulltext was working and is kept; this result "
                                    f"was written to '{_sibling(target, n)}' — pass --force to overwrite instead")
        raise exists_error(target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)

"""The errors a user can cause and fix, and how every error is shown: as one line.

Every error a user can cause derives from `NulltextError` (and from the standard error it refines, so
`except ValueError` still catches a bad setting). The CLI, the web app and batch runs catch the base and
show its first line alone; any other error is shown with its type's name first. The lowest layer:
imports nothing of nulltext and nothing heavy.
"""

from __future__ import annotations


class NulltextError(Exception):
    """An error the user can fix; its message is one line naming the problem and the fix."""


def short(text: str, n: int = 40) -> str:
    """`text` cut to at most `n` characters, an ellipsis marking the cut."""
    return text if len(text) <= n else text[: n - 1] + "…"


def first_line(e: BaseException, n: int | None = None) -> str:
    """An error's first line with its white space folded (the type's name if it says nothing), cut to `n`."""
    text = str(e).strip()
    line = " ".join(text.splitlines()[0].split()) if text else type(e).__name__
    return line if n is None else short(line, n)


def one_line(e: BaseException) -> str:
    """How the faces show an error: a NulltextError's first line; any other's with its type's name first."""
    line = first_line(e)
    return line if isinstance(e, NulltextError) or not str(e).strip() else f"{type(e).__name__}: {line}"


def runtime_errors() -> tuple[type[BaseException], ...]:
    """Errors shown as one line without a hint to debug: bad values reaching a library, files that cannot
    be written, a GPU out of memory (torch is imported only when an error is being shown)."""
    import torch

    return ValueError, OSError, torch.OutOfMemoryError

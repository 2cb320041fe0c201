"""What every command shares: the one-line error, settings checks, the model, progress bars, output checks."""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from pathlib import Path

from nulltext.errors import NulltextError


class CLIError(NulltextError):
    """A user-facing one-line error."""


def _settings(config_class, **values):
    """Build a settings dataclass; its own checks (`__post_init__`) become one-line errors."""
    try:
        return config_class(**values)
    except ValueError as e:
        raise CLIError(str(e)) from None


@contextmanager
def collector_paused(freeze: bool):
    """Python's cyclic garbage collector off while the libraries import and the model loads.

    Importing torch, diffusers and transformers makes about a million objects that live as long as the
    process; the collector's passes re-scan them as they pile up: 0.5 s of `nulltext invert`'s start-up on
    the bundled model (docs/benchmarks.md). Paused, then `freeze` (when the process is the command, not a
    caller's Python): they move to the collector's permanent generation (`gc.freeze`), so no later pass
    scans them either. Reference counting frees what dies, as always; the collector is back on afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _load_model(args):
    with collector_paused(freeze=getattr(args, "own_process", False)):
        from nulltext.model import load_model

        return load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                          config=getattr(args, "model_config", None), loras=getattr(args, "lora", None) or ())


def _progress(args, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=args.quiet, leave=False, file=sys.stderr)


def _refuse_existing(paths: list[Path], args) -> None:
    """Before the work: earlier results are never overwritten without --force, and every output can be written."""
    from nulltext.io.outputs import check_outputs

    check_outputs(paths, force=args.force)

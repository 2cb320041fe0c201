"""`main`: parse, check the text arguments, run the command; every error is one line unless --debug."""

from __future__ import annotations

import gc
import os
import sys

from nulltext.cli.common import CLIError, collector_paused
from nulltext.cli.parser import build_parser
from nulltext.errors import NulltextError


EXIT_ERROR = 2


def _quiet_libraries(freeze: bool) -> None:
    """diffusers' and transformers' loading bars and advice are noise on our command line."""
    with collector_paused(freeze):
        import diffusers
        import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


# free-text arguments (not paths: a file name may hold any bytes) → how the user wrote them
_TEXT_ARGUMENTS = {"prompt": "--prompt", "targets": "a target prompt", "reweight": "--reweight", "blend": "--blend",
                   "subtract": "--subtract", "word_cross": "--word-cross"}


def _check_text_arguments(args) -> None:
    """Text that is not valid UTF-8 arrives as surrogate escapes; refuse it naming the argument."""
    from nulltext.settings import utf8_problem

    for dest, name in _TEXT_ARGUMENTS.items():
        values = getattr(args, dest, None)
        for value in values if isinstance(values, list) else [values]:
            for text in value if isinstance(value, tuple) else [value]:
                problem = utf8_problem(text) if isinstance(text, str) else None
                if problem:
                    raise CLIError(f"{name} is not valid UTF-8: {problem} — pass it as UTF-8 text")


def _close_progress_bars() -> None:
    """Clear any progress bar still on screen, so a message starts on a fresh line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


class _TerminateAsExit:
    """SIGTERM unwinds like Ctrl-C (exit 143), so temporary files are removed on the way out."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def terminate(signum, frame):
                raise SystemExit(128 + signum)

            self.previous = signal.signal(signal.SIGTERM, terminate)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """One command; `own_process`: main is the whole process (the console script), so what the libraries
    import and the model loads is frozen out of the garbage collector (`collector_paused`)."""
    args = build_parser().parse_args(argv)
    args.own_process = own_process
    debug = bool(getattr(args, "debug", False) or os.environ.get("NULLTEXT_DEBUG"))
    try:
        if not getattr(args, "reads_no_model", False):
            _quiet_libraries(own_process)
        _check_text_arguments(args)
        with _TerminateAsExit():
            code = args.func(args)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("nulltext: interrupted — files already reported as written are complete; no partial file was left",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the safety net: every error is one line unless --debug
        _close_progress_bars()
        if debug:
            raise
        from nulltext.errors import one_line, runtime_errors

        hint = "" if isinstance(e, NulltextError) or isinstance(e, runtime_errors()) else " (run with --debug for the traceback)"
        print(f"nulltext: error: {one_line(e)}{hint}", file=sys.stderr)
        return EXIT_ERROR
    return code or 0


def run() -> None:
    """The `nulltext` console script: `main`, then exit without the interpreter's final full collection.

    At exit the collector would scan every object torch, diffusers and transformers made (0.5 s of a
    command's time, docs/benchmarks.md); frozen, they are left to the operating system. Exit handlers and
    files are untouched: `main` has closed what it wrote, and `atexit` still runs.
    """
    code = main(own_process=True)
    gc.freeze()
    sys.exit(code)

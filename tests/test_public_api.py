"""The public API: one import line (the README's), and one error base for everything a user can fix."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import nulltext
from nulltext.errors import NulltextError, first_line, one_line

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_library_example_needs_one_import_line():
    lines = [line for line in README.read_text().splitlines() if line.startswith("from nulltext import")]
    assert len(lines) == 1, lines
    names = [n.strip() for n in lines[0].removeprefix("from nulltext import").split(",")]
    namespace: dict = {}
    exec(lines[0], namespace)  # noqa: S102 - the README's own line
    assert all(callable(namespace[n]) for n in names)
    assert set(names) <= set(nulltext.__all__)
    for name in nulltext.__all__[1:]:  # each export is the object its module defines
        assert getattr(nulltext, name) is getattr(importlib.import_module(nulltext._EXPORTS[name]), name)


def test_importing_nulltext_loads_no_heavy_library():
    code = "import sys, nulltext; print(nulltext.__version__, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [nulltext.__version__, "False", "False"]


def test_every_error_a_user_can_cause_derives_from_nulltext_error():
    errors = []
    for module in pkgutil.walk_packages(nulltext.__path__, "nulltext."):
        if module.name.startswith(("nulltext.app", "nulltext.batch.ray_data")) or module.name.endswith("__main__"):
            continue  # optional extras (gradio, ray), and `python -m` entry points
        mod = importlib.import_module(module.name)
        errors += [cls for _, cls in inspect.getmembers(mod, inspect.isclass)
                   if cls.__module__ == mod.__name__ and issubclass(cls, Exception) and cls.__name__.endswith("Error")
                   and not cls.__name__.startswith("_")]
    assert len(errors) >= 13, [e.__name__ for e in errors]
    assert [e.__name__ for e in errors if not issubclass(e, NulltextError)] == []


def test_errors_show_as_one_line():
    from nulltext.model import PromptError

    assert one_line(PromptError("the prompt  is empty\n  second line")) == "the prompt is empty"  # no type name
    assert one_line(KeyError("x")) == "KeyError: 'x'" and one_line(RuntimeError()) == "RuntimeError"
    assert first_line(ValueError("ab   cd\nef")) == "ab cd" and first_line(ValueError("ab   cd"), 3) == "ab…"


def test_help_and_argument_errors_load_no_heavy_library():
    """`nulltext --help`, a command's help and a bad argument answer without importing torch or the model libraries."""
    code = ("import sys\nfrom nulltext.cli import main\n"
            "for argv in (['--help'], ['invert', '--help'], ['edit', '--help'], ['invert', 'p.png', '--steps', '0'],\n"
            "             ['invert', 'p.png', '--prompt', 'x', '--method', 'bogus']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code in (0, 2), e.code\n"
            "print(*sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL', 'safetensors')\n"
            "              if m in sys.modules), 'end', file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: nulltext invert" in run.stdout and "--steps" in run.stderr and "bogus" in run.stderr
    assert run.stderr.splitlines()[-1] == "end"  # none of the heavy libraries was imported

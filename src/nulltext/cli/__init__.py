"""The `nulltext` command line: parses, calls the library, prints. No algorithm lives here.

`main` (main.py) runs `build_parser` (parser.py) and a command (commands.py, one `cmd_*` per subcommand); what
the commands share, `CLIError` and `_load_model` among it, is in common.py. The library is imported inside the
commands, when they run, so `nulltext --help` stays fast.
"""

from nulltext.cli.common import CLIError, _load_model
from nulltext.cli.main import EXIT_ERROR, main
from nulltext.cli.parser import build_parser

__all__ = ["CLIError", "EXIT_ERROR", "_load_model", "build_parser", "main"]

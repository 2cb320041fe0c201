"""`python -m nulltext.cli`: the command line."""

from nulltext.cli.main import run

run()

"""`python -m nulltext.cli`: the command line."""

import sys

from nulltext.cli import main

sys.exit(main())

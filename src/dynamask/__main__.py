"""``python -m dynamask``: the command line (see :mod:`dynamask.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m dynamask.cli``: the same command line as ``python -m dynamask``."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

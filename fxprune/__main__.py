"""``python -m fxprune``: the same command line as the ``fxprune`` console script."""
import sys

from fxprune.cli import main

sys.exit(main())

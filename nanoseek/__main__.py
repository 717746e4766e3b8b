"""``python -m nanoseek``: the same command line as the ``nanoseek`` entry point."""

import sys

from nanoseek.cli import main

sys.exit(main())

"""``python -m converters``: the same as ``gq-tf export``."""

import sys

from converters.cli import main

sys.exit(main())

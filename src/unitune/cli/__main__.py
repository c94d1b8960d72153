"""``python -m unitune.cli``."""

import sys

from unitune.cli import main

sys.exit(main())

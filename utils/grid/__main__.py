"""``python -m utils.grid``: see ``utils.grid.cli``."""
import sys

from utils.grid.cli import main

sys.exit(main())

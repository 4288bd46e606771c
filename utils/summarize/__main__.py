"""``python -m utils.summarize``: see ``utils.summarize.command``."""
import sys

from utils.summarize.command import main

sys.exit(main())

"""`python -m eventbus`: the command line (see eventbus.cli)."""

import sys

from .cli import main

sys.exit(main())

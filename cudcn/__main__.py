"""``python -m cudcn``: the ``cudcn`` command."""

import sys

from cudcn.cli import main

sys.exit(main())

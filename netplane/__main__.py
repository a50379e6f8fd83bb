"""``python -m netplane`` is the ``netplane`` command."""

import sys

from netplane.cli import main

sys.exit(main())

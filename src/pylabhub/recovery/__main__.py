"""``python -m pylabhub.recovery`` is ``datablock-admin``."""

import sys

from .cli import main

sys.exit(main())

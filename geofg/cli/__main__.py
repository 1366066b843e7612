"""``python -m geofg.cli``: the ``geofg`` command."""

import sys

from geofg.cli import main

sys.exit(main())

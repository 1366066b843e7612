"""``python -m geofg.cli``: the ``geofg`` command."""

from geofg.cli import main

main()

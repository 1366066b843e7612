"""``python -m geofg.cli``: the ``geofg`` command."""

from geofg.cli import main

if __name__ == "__main__":
    main()

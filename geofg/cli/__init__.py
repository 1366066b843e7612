"""The ``geofg`` command line: parse -> JobConfig -> one library call -> render -> exit code.

The commands live in :mod:`.run_cmds` (classify, segment, submit, scan), :mod:`.mosaic_cmds`
(stats, fields, alerts, zones, info) and :mod:`.model_cmds` (models, train, evaluate, export,
explain); the typer apps, shared options, the exit-code table :data:`EXIT_CODES` and error
printing are in :mod:`.common`. Importing this package registers every command on :data:`app`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from geofg import __version__

# --help lists the commands in the order their modules register them
# isort: off
from geofg.cli import run_cmds  # noqa: F401
from geofg.cli import mosaic_cmds  # noqa: F401
from geofg.cli import model_cmds  # noqa: F401
# isort: on
from geofg.cli.common import EXIT_CODES, MAX_ERROR_CHARS, app, err, out

__all__ = ["EXIT_CODES", "MAX_ERROR_CHARS", "app", "err", "main", "out"]


def _version(value: bool) -> None:
    if value:
        out.print(f"geofg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False) -> None:
    """geofg."""


_TILE_COMMANDS = frozenset({"classify", "segment", "scan"})
"""Commands that run the tile pipeline: they reuse one heap (benchmarks/HISTORY.md, section 0)."""


def main() -> None:
    """Console-script entry point."""
    from geofg.runtime import tune_process

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    tune_process(reuse_heap=command in _TILE_COMMANDS)  # before torch, GDAL or any thread starts
    app(prog_name="geofg")


"""Runners execute a plan's pending units; the local runner is the default.

The interface they share (source, sink, runner) is :mod:`geofg.runners.base`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geofg.runners.base import Runner

__all__ = ["make_runner"]


def make_runner(kind: str, predictor_factory: Callable[[Any], Any] | None = None) -> Runner:
    """The runner of ``runner.kind`` (``local`` or ``ray``; ray imported only then).

    ``predictor_factory`` builds the predictor from the plan instead of the source loading the
    model file (tests, custom models); for Ray it travels pickled.
    """
    if kind == "ray":
        from geofg.runners.ray import RayRunner

        return RayRunner(predictor_factory)
    from geofg.runners.local import LocalRunner

    return LocalRunner(predictor_factory)

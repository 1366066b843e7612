"""Optional dependencies (pyproject's extras): tell a user which one is missing and how to add it.

A command that needs an extra calls :func:`require_extra` in its preflight, before anything is
written, so a missing extra is one line with the exact install command (exit 3), never a
traceback after an empty mosaic was created. The check looks packages up without importing them.

Examples:
    >>> install_command("ray")
    "pip install 'geofg[ray]'"
"""

from __future__ import annotations

from importlib.util import find_spec

from geofg.errors import MissingExtraError

#: extra name -> the packages it installs that geofg imports (all must be present).
EXTRAS: dict[str, tuple[str, ...]] = {
    "ray": ("ray",),
    "tune": ("ray", "ray.tune"),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
}


def install_command(extra: str) -> str:
    """The shell command that installs ``extra`` (quoted so no shell expands its brackets)."""
    return f"pip install 'geofg[{extra}]'"


def missing_packages(extra: str) -> list[str]:
    """The packages of ``extra`` that cannot be imported here (empty: the extra is installed)."""
    missing = []
    for module in EXTRAS[extra]:
        if missing:  # a submodule's parent is missing: do not import it to look
            missing.append(module)
            continue
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or None in sys.modules
            found = False
        if not found:
            missing.append(module)
    return missing


def require_extra(extra: str, purpose: str) -> None:
    """Raise unless every package of ``extra`` is installed.

    Args:
        extra: a key of :data:`EXTRAS`.
        purpose: what needs it, as the user asked for it (e.g. ``"--runner ray"``).

    Raises:
        MissingExtraError: one line naming the missing package and the install command (exit 3).
    """
    missing = missing_packages(extra)
    if missing:
        raise MissingExtraError(
            f"{purpose} needs the optional [{extra}] dependencies, found {', '.join(missing)} "
            f"missing; install them with: {install_command(extra)}"
        )

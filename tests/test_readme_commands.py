"""The README's command list names every command of the CLI (issue 18, item 7)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from geofg.cli import app


def _commands(group: typer.Typer, prefix: str = "") -> set[str]:
    cmd = typer.main.get_command(group)
    out = set()
    for name, sub in cmd.commands.items():  # type: ignore[attr-defined]
        if hasattr(sub, "commands"):
            out |= {f"{name} {s}" for s in sub.commands}
        else:
            out.add(name)
    return out


def test_readme_lists_every_command() -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text[text.index("## What it does"):]
    block = block[: block.index("```", block.index("```") + 3)]
    listed = {" ".join(m.split()) for m in re.findall(r"^geofg ((?:[a-z]+)(?: +(?:list|classifier|segmenter))?)", block, re.M)}
    missing = _commands(app) - listed
    assert not missing, f"README's command list lacks: {sorted(missing)}"

"""Mosaic-wide summaries from ledger records: area per class and per health zone.

Statistics come from the per-unit counts stored in each unit's ledger record, so a summary never
re-reads the mosaic and a resumed run counts units done by earlier runs too.

Cloud, cloud shadow and snow/ice (:mod:`geofg.masks`) are rows of their own (``masked``), never
part of a land-cover class: class areas cover clear pixels only, and every share is of all valid
pixels, so classes and masked rows add up to 100 %. When crop health was not assessed (out of
season, :mod:`geofg.season`), ``health_assessed`` is False, ``health_note`` says why and no zone
area is reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from geofg.health import HEALTH_CLASSES
from geofg.masks import MASK_CLASSES

if TYPE_CHECKING:
    from geofg.io.ledger import UnitRecord
    from geofg.pipeline import Plan

M2_PER_HA = 10_000.0


@dataclass(frozen=True)
class AreaRow:
    """One row of an area table."""

    name: str
    pixels: int
    hectares: float
    share: float  # of valid pixels


@dataclass(frozen=True)
class RunSummary:
    """Counts and areas over the whole mosaic."""

    units_total: int
    units_done: int
    units_failed: int
    units_empty: int
    valid_px: int
    valid_ha: float
    mean_confidence: float | None
    classes: list[AreaRow]
    health: list[AreaRow]
    masked: list[AreaRow] = field(default_factory=list)
    """Cloud, cloud shadow, snow/ice (empty when the run had no mask)."""
    health_assessed: bool = True
    health_note: str | None = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def to_json(self) -> str:
        """Return indented JSON."""
        return json.dumps(self.to_dict(), indent=2)


def _rows(names: list[str], counts: list[int], px_ha: float, valid: int) -> list[AreaRow]:
    return [
        AreaRow(n, c, round(c * px_ha, 4), round(c / valid, 6) if valid else 0.0)
        for n, c in zip(names, counts, strict=True)
    ]


def summarise(p: Plan, records: dict[str, UnitRecord]) -> RunSummary:
    """Sum the per-unit statistics of the plan's units that are done."""
    names = [c.name for c in p.card.classes]
    hnames = [n for n, _ in HEALTH_CLASSES]
    ccounts, hcounts = [0] * len(names), [0] * len(hnames)
    mnames = [n for n, _ in MASK_CLASSES]
    mcounts = [0] * len(mnames)
    valid = conf = done = failed = empty = 0
    for u in p.units:
        r = records.get(u.id)
        if r is None:
            continue
        if r.status == "failed":
            failed += 1
            continue
        done += 1
        empty += bool(r.empty)
        s = r.stats
        valid += s.get("valid_px", 0)
        conf += s.get("confidence_sum", 0)
        for i, c in enumerate(s.get("class_counts", [])[: len(names)]):
            ccounts[i] += c
        for i, c in enumerate(s.get("health_counts", [])[: len(hnames)]):
            hcounts[i] += c
        for i, c in enumerate(s.get("mask_counts", [])[: len(mnames)]):
            mcounts[i] += c
    px_ha = p.pixel_area_m2 / M2_PER_HA
    shown = sum(ccounts)
    season = getattr(p, "season", None)
    return RunSummary(
        units_total=len(p.units),
        units_done=done,
        units_failed=failed,
        units_empty=empty,
        valid_px=valid,
        valid_ha=round(valid * px_ha, 4),
        mean_confidence=round(conf / shown / 250, 4) if shown else None,
        classes=_rows(names, ccounts, px_ha, valid),
        health=_rows(hnames, hcounts, px_ha, valid),
        masked=_rows(mnames[1:], mcounts[1:], px_ha, valid) if getattr(p, "mask", None) else [],
        health_assessed=season is None or season.assessed,
        health_note=None if season is None else season.reason,
    )

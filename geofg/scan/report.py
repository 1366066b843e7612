"""The run report of a scan, as JSON (for machines) and Markdown (for people), one pair per run.

Reports go to ``report.folder`` (default ``<mosaic>.reports/`` beside the mosaic, never inside
it, so a scan with nothing new leaves the mosaic unchanged) as
``scan-<UTC time>-<run id>.json`` and ``.md``, written atomically (temp file, then rename).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from geofg import __version__
from geofg.health import HEALTH_CLASSES
from geofg.io.store import Folder, Target
from geofg.masks import MASK_CLASSES
from geofg.scan import inbox as ib

if TYPE_CHECKING:
    from geofg.io.ledger import UnitRecord
    from geofg.scan.run import ScanPlan, ScanResult

STATUSES = ("processed", "skipped", "deferred", "failed", "deleted")


def report_dict(r: ScanResult) -> dict[str, Any]:
    """The JSON report of one scan."""
    return {
        "geofg_version": __version__,
        "run_id": r.run_id,
        "mosaic": r.mosaic,
        "started": r.started,
        "finished": r.finished,
        "wrote_mosaic": r.wrote,
        "scenes": {**{s: r.count(s) for s in STATUSES}, "list": [asdict(s) for s in r.scenes]},
        "units": {"ran": r.units_ran, "skipped": r.units_skipped, "failed": len(r.units_failed),
                  "empty": r.units_empty, "failed_ids": r.units_failed},  # fmt: skip
        "km2_processed": round(r.km2_processed, 6),
        "dates_touched": r.dates_touched,
        "areas": r.summary,
    }


def cell(v: object) -> str:
    """``v`` as one Markdown table cell: no line breaks, ``|`` and markup characters escaped
    (an inbox file name must not add rows or headings to the report)."""
    text = " ".join(str(v).split())
    for ch in "\\`[]<>|":
        text = text.replace(ch, "\\" + ch)
    return text


def _fmt(v: float) -> str:
    return f"{v:+.4f}" if v else "0"


def report_markdown(d: dict[str, Any]) -> str:
    """The Markdown rendering of :func:`report_dict`'s output."""
    s, u = d["scenes"], d["units"]
    lines = [
        f"# geofg scan {d['run_id']}",
        "",
        f"- mosaic: `{d['mosaic']}`",
        f"- started {d['started']}, finished {d['finished']} (geofg {d['geofg_version']})",
        f"- scenes: {s['processed']} processed, {s['skipped']} skipped, {s['deferred']} deferred, "
        f"{s['failed']} failed, {s['deleted']} deleted",
        f"- units: {u['ran']} ran ({u['empty']} empty), {u['skipped']} already current, "
        f"{u['failed']} failed; {d['km2_processed']:.4f} km² processed",
        f"- dates written: {', '.join(d['dates_touched']) or 'none (nothing new: mosaic unchanged)'}",
        "",
    ]
    if s["list"]:
        lines += ["## Scenes", "", "| scene | outcome | date | why |", "| --- | --- | --- | --- |"]
        lines += [f"| {cell(x['name'])} | {x['status']} | {x['date'] or '-'} | {cell(x['reason'])} |"
                  for x in s["list"]]
        lines.append("")
    if u["failed_ids"]:
        lines += ["## Failed units", "", "| unit | error |", "| --- | --- |"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in u["failed_ids"].items()]
        lines.append("")
    areas = d.get("areas") or {}
    for row in areas.get("dates", []):
        lines += [f"## {row['date']}: {row['valid_km2']:.4f} km² valid ({row['units']} units)", ""]
        ch = row.get("change")
        head = "| class | km² |" + (f" change since {ch['from']} (km²) |" if ch else "")
        lines += [head, "| --- | --- |" + (" --- |" if ch else "")]
        for n, v in row["classes"].items():
            lines.append(f"| {n} | {v:.4f} |" + (f" {_fmt(ch['classes'][n])} |" if ch else ""))
        for n, v in row.get("masked_km2", {}).items():  # apart: not a land-cover class
            lines.append(f"| *{n} (masked, not classified)* | {v:.4f} |" + (" |" if ch else ""))
        lines += ["", "| health (index-based, crop classes) | km² |" + (" change (km²) |" if ch else ""),
                  "| --- | --- |" + (" --- |" if ch else "")]  # fmt: skip
        for n, v in row["health"].items():
            lines.append(f"| {n} | {v:.4f} |" + (f" {_fmt(ch['health'][n])} |" if ch else ""))
        if row.get("health_not_assessed"):
            lines += ["", f"Crop health not assessed: {row['health_not_assessed']}."]
        lines.append("")
    return "\n".join(lines)


def write_report(r: ScanResult, folder: Target) -> list[str]:
    """Write the JSON and Markdown reports (a local folder or an ``s3://`` prefix); return their
    paths or URLs (JSON first)."""
    f = Folder(folder)
    stamp = (r.finished or r.started).replace("-", "").replace(":", "").replace("+0000", "Z")
    stamp = stamp.replace("+00:00", "Z").replace("+", "")
    d = report_dict(r)
    js, md = f"scan-{stamp}-{r.run_id}.json", f"scan-{stamp}-{r.run_id}.md"
    f.write_text(js, json.dumps(d, indent=2) + "\n")
    f.write_text(md, report_markdown(d) + "\n")
    return [f.location(js), f.location(md)]


def summarise_dates(p: ScanPlan, records: dict[str, UnitRecord]) -> dict[str, Any]:
    """Area per class and per health class for every date, and the change from the date before.

    Computed from the ledger's per-unit counts (done units of the current model and config), so
    it never re-reads the mosaic and counts units done by earlier scans too.
    """
    names = [c.name for c in p.card.classes]
    hnames = [n for n, _ in HEALTH_CLASSES]
    per: dict[int, dict[str, Any]] = {}
    for r in records.values():
        if r.status != "done" or "date" not in r.stats or r.model_sha256 != p.model_sha256:
            continue
        d = per.setdefault(int(r.stats["date"]), {"units": 0, "valid_px": 0, "cls": [0] * len(names),
                                                    "health": [0] * len(hnames), "mask": [0] * 4,
                                                    "not_assessed": None})  # fmt: skip
        d["units"] += 1
        for i, c in enumerate(r.stats.get("mask_counts", [])[:4]):
            d["mask"][i] += c
        d["not_assessed"] = r.stats.get("health_not_assessed", d["not_assessed"])
        d["valid_px"] += int(r.stats.get("valid_px", 0))
        for i, c in enumerate(r.stats.get("class_counts", [])[: len(names)]):
            d["cls"][i] += c
        for i, c in enumerate(r.stats.get("health_counts", [])[: len(hnames)]):
            d["health"][i] += c
    km2 = p.grid.pixel_area_m2 / 1e6
    dates: list[dict[str, Any]] = []
    prev: dict[str, Any] | None = None
    for day in sorted(per):
        d = per[day]
        row = {
            "date": ib.day_str(day),
            "units": d["units"],
            "valid_km2": round(d["valid_px"] * km2, 6),
            "classes": {n: round(c * km2, 6) for n, c in zip(names, d["cls"], strict=True)},
            "health": {n: round(c * km2, 6) for n, c in zip(hnames, d["health"], strict=True)},
        }
        if p.mask is not None:  # cloud, shadow, snow/ice: apart from the classes, never land cover
            row["masked_km2"] = {n: round(c * km2, 6) for (n, _), c in zip(MASK_CLASSES[1:], d["mask"][1:], strict=True)}
        if d["not_assessed"]:
            row["health_not_assessed"] = d["not_assessed"]
        if prev is not None:
            row["change"] = {
                "from": prev["date"],
                "valid_km2": round(row["valid_km2"] - prev["valid_km2"], 6),
                "classes": {n: round(row["classes"][n] - prev["classes"][n], 6) for n in names},
                "health": {n: round(row["health"][n] - prev["health"][n], 6) for n in hnames},
            }
        dates.append(row)
        prev = row
    return {"km2_per_pixel": km2, "class_names": names, "health_names": hnames, "dates": dates}

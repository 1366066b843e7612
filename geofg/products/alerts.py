"""Alerts from a scan's per-field time series: ``geofg alerts MOSAIC --fields FIELDS -o OUT``.

The series is :func:`geofg.products.fields.field_table` on a scan mosaic (one row per field and
date). The index is ``ndvi_median``: the coverage-weighted median NDVI of the field's clear pixels
that date (the mosaic's ``ndvi`` layer, steps of 0.01).

Rules (:class:`AlertRules`, all configurable):

* an observation counts when its ``clear_share`` is at least ``min_clear`` (0.7) and the field
  has at least ``min_assessed_ha`` (1 ha) of assessed crop or grass that date (so only dates in
  the growing season, :mod:`geofg.season`, and fields the model sees as crop count: a field's
  NDVI falling after harvest or in winter is no alert); others are neither alerted on nor used as
  a baseline;
* the baseline of an observation is the median ``ndvi_median`` of the field's last ``window`` (3)
  counted observations *before* it (never the date itself); it needs at least ``min_history`` (3);
* an alert is raised when ``baseline - ndvi_median >= drop`` (0.1 NDVI).

Why 0.1: half the width of a health zone (0.2, :mod:`geofg.health`), ten steps of the stored
index, meant to sit above the date-to-date noise of a clear, in-season field median (view
geometry, atmosphere, phenology between close dates; not measured here: the NAIP dates are two
years apart, tune ``--drop`` on your own series), yet small enough to flag a
stress that the zone rule of earlier versions (one whole zone down) saw only when it crossed a
zone edge. The figures on the NAIP three-date scan are in docs/products.md.

With fewer than ``min_history + 1`` dates nothing can trigger: a three-date series needs
``min_history`` of 2 or less. A mosaic without the ``ndvi`` layer (a model without red/NIR bands,
or written before mosaic schema 3) is refused with one line.

One row per alert: ``field_id``, ``date``, ``ndvi_median``, ``baseline``, ``drop``,
``n_baseline`` (observations behind the baseline), ``clear_share``, ``assessed_ha`` and the
field's geometry; written like the field table (GeoParquet, GeoPackage, FlatGeobuf, CSV). A file
with no rows means no alert (its columns are still written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError, InputError

ALERT_COLUMNS = ("field_id", "date", "ndvi_median", "baseline", "drop", "n_baseline", "clear_share",
                 "assessed_ha")  # fmt: skip


@dataclass(frozen=True, slots=True)
class AlertRules:
    """When a drop of a field's median index is an alert (see the module docstring)."""

    drop: float = 0.1
    min_clear: float = 0.7
    min_assessed_ha: float = 1.0
    window: int = 3
    min_history: int = 3

    def __post_init__(self) -> None:
        if not (self.drop > 0 and 0 <= self.min_clear <= 1 and self.min_assessed_ha >= 0
                and self.window >= 1 and 1 <= self.min_history <= self.window):  # fmt: skip
            raise ConfigError(f"alert rules {self}: expected drop > 0, 0 <= min_clear <= 1, min_assessed_ha "
                              ">= 0 and 1 <= min_history <= window; fix the options")  # fmt: skip


def mosaic_alerts(mosaic: Path | str, fields: Path, rules: AlertRules | None = None) -> tuple[Any, Any]:
    """The per-field time series of a scan mosaic (a local path or ``s3://`` prefix) and its
    alerts: ``(table, alerts)``.

    Raises:
        InputError: not a scan mosaic (no time axis), or bad fields (:func:`field_table`).
    """
    from geofg.products.fields import field_table

    from geofg.health import INDEX
    from geofg.io import mosaic as mz

    if mz.is_mosaic(mosaic):
        grid = mz.open_checked(mosaic).attrs["geofg:grid"]
        assert isinstance(grid, dict)  # open_checked refuses a mosaic without its grid record
        layers = [str(n) for n in grid.get("layers", [])]
        if not grid.get("time"):
            raise InputError(f"{mosaic}: expected a scan mosaic with a time axis, found a single-date (classify) "
                             "mosaic; alerts compare dates: give a mosaic written by geofg scan")  # fmt: skip
        if INDEX not in layers:
            raise InputError(f"{mosaic}: expected a mosaic with the {INDEX} index layer, found layers "
                             f"{','.join(layers)} (a model without red/NIR bands, or a mosaic older "
                             "than schema 3); rebuild it with geofg scan --overwrite and a model with red and NIR")  # fmt: skip
    table = field_table(mosaic, fields)
    return table, field_alerts(table, rules)


def field_alerts(table: Any, rules: AlertRules | None = None) -> Any:
    """The alerts of a per-field, per-date table (a GeoDataFrame with :data:`ALERT_COLUMNS`).

    Args:
        table: :func:`geofg.products.fields.field_table` of a scan mosaic (columns ``field_id``,
            ``date``, ``clear_share``, ``inside_ha``, ``health_assessed_share``, ``ndvi_median``).
        rules: the alert rules.
    """
    import geopandas as gpd

    rules = rules or AlertRules()
    rows, geoms = [], []
    for _, g in table.sort_values(["field_id", "date"], kind="stable").groupby("field_id", sort=False):
        history: list[float] = []
        for _, r in g.iterrows():
            assessed = _num(r["clear_share"]) * _num(r["inside_ha"]) * _num(r["health_assessed_share"])
            index = _num(r["ndvi_median"])
            if not r["date"] or _num(r["clear_share"]) < rules.min_clear or not assessed >= rules.min_assessed_ha \
                    or np.isnan(index):  # fmt: skip
                continue
            recent = history[-rules.window :]
            if len(recent) >= rules.min_history:
                baseline = float(np.median(recent))
                if baseline - index >= rules.drop - 1e-9:  # NDVI in hundredths: 0.7 - 0.6 is 0.0999...
                    rows.append({"field_id": r["field_id"], "date": r["date"], "ndvi_median": index,
                                 "baseline": round(baseline, 4), "drop": round(baseline - index, 4),
                                 "n_baseline": len(recent),
                                 "clear_share": r["clear_share"], "assessed_ha": round(assessed, 4)})  # fmt: skip
                    geoms.append(r.geometry)
            history.append(index)
    return gpd.GeoDataFrame(rows, columns=list(ALERT_COLUMNS), geometry=geoms, crs=table.crs)


def _num(v: Any) -> float:
    """A table value as float, NaN for missing."""
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")

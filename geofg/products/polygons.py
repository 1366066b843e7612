"""Polygons of a class layer: ``geofg export MOSAIC --polygons OUT.parquet [--layer] [--time]``.

Every 4-connected patch of one value (``rasterio.features.shapes``) becomes a polygon with its
``value``, ``name`` (the legend's) and ``area_m2``, in a GeoParquet 1.1 file in the mosaic's CRS.

Streaming: the layer is read one band of chunk rows at a time (one chunk high, the mosaic's
width), so memory follows the mosaic's width and the polygons still open, never its height.
Polygons are traced in pixel coordinates (integers, so pieces meet exactly), and a polygon that
touches the bottom edge of a band stays open; the next band's polygons of the same value that
share a stretch of that edge with it are unioned into it (a corner is not a shared edge: 4-
connectivity, as ``shapes``). A polygon that no longer touches the next band is closed: turned
into map coordinates and written in the next row group of the Parquet file. So a field cut by
chunk edges comes out as one polygon, as if the layer had been traced whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError
from geofg.io import mosaic as mz
from geofg.products.fields import check_output
from geofg.io.atomic import atomic_path

BATCH = 10_000


def _geo_metadata(crs_wkt: str) -> bytes:
    from pyproj import CRS

    col = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": CRS.from_wkt(crs_wkt).to_json_dict()}
    return json.dumps({"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}).encode()


class _Writer:
    """Row groups of (value, name, area_m2, geometry) into a GeoParquet 1.1 file."""

    def __init__(self, path: Path, crs_wkt: str, transform: tuple[float, ...], names: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.schema = pa.schema([("value", pa.uint8()), ("name", pa.string()), ("area_m2", pa.float64()),
                                 ("geometry", pa.binary())], metadata={"geo": _geo_metadata(crs_wkt)})  # fmt: skip
        self.writer = pq.ParquetWriter(path, self.schema)
        self.transform, self.names = transform, names
        self.rows: list[tuple[int, Any]] = []
        self.count = 0

    def add(self, value: int, geom: Any) -> None:
        self.rows.append((value, geom))
        if len(self.rows) >= BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import shapely

        if not self.rows:
            return
        a, b, c, d, e, f = self.transform
        geoms = shapely.transform(np.array([g for _, g in self.rows], dtype=object),
                                  lambda xy: np.column_stack([c + a * xy[:, 0] + b * xy[:, 1], f + d * xy[:, 0] + e * xy[:, 1]]))  # fmt: skip
        values = [v for v, _ in self.rows]
        table = pa.table({"value": pa.array(values, pa.uint8()),
                          "name": [self.names[v] if v < len(self.names) else str(v) for v in values],
                          "area_m2": shapely.area(geoms), "geometry": shapely.to_wkb(geoms)}, schema=self.schema)  # fmt: skip
        self.writer.write_table(table)
        self.count += len(self.rows)
        self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _shares_edge(p: Any, q: Any) -> bool:
    import shapely

    return bool(shapely.length(shapely.intersection(shapely.boundary(p), shapely.boundary(q))) > 0)


def export_polygons(mosaic: Path, out: Path, *, when: str | None = None, layer: str = "class",
                    overwrite: bool = False) -> tuple[Path, int]:  # fmt: skip
    """Write the polygons of ``layer`` (latest view, date ``when``, or 2-D) to ``out`` (GeoParquet).

    Returns the path and the number of polygons. Raises ConfigError for a bad layer or output.
    """
    import rasterio.features
    import shapely
    from affine import Affine

    from geofg.scan.cog import _open
    from geofg.scan.stats import _source

    group = _open(mosaic)
    grid = group.attrs["geofg:grid"]
    if layer not in ("class", "health", "mask") or layer not in grid["layers"]:
        raise ConfigError(f"--layer {layer}: polygons are traced from class, health or mask (of this mosaic)")
    check_output(out, overwrite, {".parquet": "GeoParquet", ".geoparquet": "GeoParquet"},
                 "a .parquet (GeoParquet) file name", option="--polygons")
    arrays, t, _ = _source(group, when)
    arr = arrays[layer]
    names = list(arr.attrs.get("class_names", []))
    height, chunk = grid["height"], grid["chunk"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer = _Writer(tmp, grid["crs_wkt"], tuple(grid["transform"]), names)
        open_: list[tuple[int, Any]] = []  # polygons touching the bottom of the last band
        for r0 in range(0, height, chunk):
            r1 = min(r0 + chunk, height)
            try:
                block = np.asarray(arr[r0:r1, :] if t is None else arr[t, r0:r1, :], np.uint8)
            except mz.DECODE_ERRORS as e:
                raise mz.damaged_chunk_error(mosaic, layer, arr, e) from None
            pieces = [(int(v), shapely.geometry.shape(g)) for g, v in rasterio.features.shapes(
                block, mask=block != mz.FILL, connectivity=4, transform=Affine(1, 0, 0, 0, 1, r0))]  # fmt: skip
            top = [i for i, (_, g) in enumerate(pieces) if g.bounds[1] == r0]
            merged: dict[int, list[int]] = {}  # open polygon -> new pieces joined to it
            taken: dict[int, int] = {}  # new piece -> open polygon it joined (first)
            for j, (v, g) in enumerate(open_):
                for i in top:
                    q = pieces[i][1]
                    if (pieces[i][0] == v and q.bounds[0] < g.bounds[2] and g.bounds[0] < q.bounds[2]
                            and _shares_edge(g, q)):  # fmt: skip
                        merged.setdefault(j, []).append(i)
            # union-find over open polygons: two joined through one new piece (a U closing here) are one
            parent = list(range(len(open_)))

            def find(x: int) -> int:
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                return x

            for j, idx in merged.items():
                for i in idx:
                    if i in taken:
                        parent[find(j)] = find(taken[i])
                    else:
                        taken[i] = j
            groups: dict[int, list[Any]] = {}
            for j, (v, g) in enumerate(open_):
                if j in merged:
                    groups.setdefault(find(j), []).append(g)
                else:
                    writer.add(v, g)  # nothing in this band joined it: closed
            for i, j in taken.items():
                groups[find(j)].append(pieces[i][1])
            nxt = [(open_[root][0], shapely.union_all(parts)) for root, parts in groups.items()]
            nxt += [p for i, p in enumerate(pieces) if i not in taken]
            open_ = []
            for v, g in nxt:
                if g.bounds[3] == r1 and r1 < height:
                    open_.append((v, g))
                else:
                    writer.add(v, g)
        for v, g in open_:
            writer.add(v, g)
        writer.close()
    return out, writer.count

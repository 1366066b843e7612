"""Small synthetic labelled-chip datasets (GeoTIFFs in tmp_path) for the train/evaluate tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from rasters import write_raster

BANDS = ["B02", "B03", "B04", "B08"]
CLASSES = ["crop", "forest", "water"]
# per-class reflectance x 10000 of B02, B03, B04, B08: easy to separate spectrally
SIGNATURES = {"crop": [600, 900, 800, 3000], "forest": [300, 500, 300, 2200],
              "water": [700, 600, 400, 150]}


def chip(label: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A (4, size, size) uint16 chip: the class signature, a random gradient and noise."""
    base = np.asarray(SIGNATURES[label], np.float64)[:, None, None]
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-0.1, 0.1)
    noise = rng.normal(0, 0.05, (len(BANDS), size, size))
    return np.clip(base * (1 + ramp + noise) * rng.uniform(0.9, 1.1), 1, 10000).astype(np.uint16)


def make_chips(root: Path, per_split: dict[str, int] | None = None, *, size: int = 32,
               seed: int = 0, descriptions: bool = True, layout: str = "csv") -> Path:
    """Write chips for every class and split; return the folder (labels.csv inside for "csv")."""
    per_split = per_split or {"train": 12, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in per_split.items():
        for label in CLASSES:
            for i in range(n):
                if layout == "csv":
                    rel = Path(label) / f"{label}_{split}_{i}.tif"
                else:  # folder per class (per split when there are several)
                    rel = (Path(split) if len(per_split) > 1 else Path()) / label / f"{i}.tif"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                write_raster(root / rel, chip(label, rng, size),
                             descriptions=BANDS if descriptions else None)
                rows.append({"file": rel.as_posix(), "label": label, "split": split})
    if layout == "csv":
        with (root / "labels.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["file", "label", "split"])
            w.writeheader()
            w.writerows(rows)
    return root


def rewrite_csv(root: Path, edit) -> None:  # noqa: ANN001
    """Rewrite labels.csv with ``edit(rows) -> rows``."""
    with (root / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = edit(rows)
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

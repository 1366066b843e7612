"""Labelled chips for training and evaluating patch classifiers.

Two layouts are read (``load_chips``):

* **a labels CSV** (``DIR/labels.csv`` or a ``.csv`` path) with columns ``file,label`` and
  optionally ``split`` (``train``/``val``/``test``), ``file`` relative to the CSV's folder, as in
  ``../shared/data/eurosat_ms/labels.csv``;
* **a folder per class** (``DIR/<class>/*.tif``), or one such folder per split
  (``DIR/train/<class>/``, ``DIR/val/<class>/``, ``DIR/test/<class>/``).

Without split information a stratified, seeded validation split is drawn from the chips
(``val_fraction``); there is then no test split. Every chip must have the same band count and size.
Band names come from the GeoTIFF band descriptions or from ``bands=`` (``--bands``).

Everything is checked before anything is trained or written: a CSV row naming a missing file, a
label outside ``class_names``, a class with no training chips, a chip of another shape, unnamed
bands, and a file that sits in the training split and in the test split are
:class:`~geofg.errors.InputError` / :class:`~geofg.errors.ConfigError` with a one-line message.

This module does not import torch.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geofg.errors import BandCountMismatchError, ConfigError, InputError, RasterNotFoundError

__all__ = ["ChipSet", "LabelledChips", "default_scale", "load_chips"]

CHIP_SUFFIXES = (".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass
class ChipSet:
    """The chips of one split.

    Attributes:
        x: Raw pixel values ``(N, C, H, W)`` in the files' dtype, bands in model order.
        y: int64 ``(N,)`` class index into the class list.
        files: Chip paths relative to the data root, same order.
    """

    x: np.ndarray
    y: np.ndarray
    files: list[str]


@dataclass
class LabelledChips:
    """Chips grouped by split, with their class names and band names."""

    splits: dict[str, ChipSet]
    class_names: list[str]
    bands: list[str]
    root: Path
    dtype: str
    layout: str
    notes: list[str] = field(default_factory=list)

    @property
    def patch_size(self) -> int:
        """Chip edge in pixels (chips are square)."""
        return int(next(iter(self.splits.values())).x.shape[-1])


def default_scale(dtype: str) -> float:
    """Return the input scale for a dtype: 1e-4 for uint16/int16 (reflectance x 10000), 1/255 for
    uint8, 1 for floats."""
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return 1.0 / 255.0
    if kind in (np.uint16, np.int16):
        return 1e-4
    return 1.0


def _rows_from_csv(csv_path: Path) -> list[tuple[str, str, str | None]]:
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in ("file", "label") if c not in cols]
        if missing:
            raise InputError(
                f"{csv_path}: expected columns file,label[,split], found {','.join(cols) or 'none'};"
                " add the missing columns"
            )
        has_split = "split" in cols
        rows = []
        for i, row in enumerate(reader, start=2):
            f, lab = (row.get("file") or "").strip(), (row.get("label") or "").strip()
            if not f or not lab:
                raise InputError(f"{csv_path}:{i}: expected a file and a label, found an empty"
                                 " field; fill in or delete the row")
            rows.append((f, lab, (row.get("split") or "").strip() or None if has_split else None))
    if not rows:
        raise InputError(f"{csv_path}: expected labelled chips, found no rows; add rows")
    return rows


def _rows_from_folders(root: Path) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """Return ``(file, label, split)`` rows and the class folder names (sorted)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name in SPLITS]
    rows: list[tuple[str, str, str | None]] = []
    classes: set[str] = set()
    groups = [(p, p.name) for p in split_dirs] if split_dirs else [(root, None)]
    for base, split in groups:
        for cdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            classes.add(cdir.name)
            for f in sorted(cdir.iterdir()):
                if f.suffix.lower() in CHIP_SUFFIXES:
                    rows.append((str(f.relative_to(root)), cdir.name, split))
    return rows, sorted(classes)


def _draw_val(labels: list[str], fraction: float, seed: int) -> list[str]:
    """Stratified split: about ``fraction`` of every class (at least one if it has >= 2) to val."""
    rng = np.random.default_rng(seed)
    out = ["train"] * len(labels)
    for lab in sorted(set(labels)):
        idx = [i for i, v in enumerate(labels) if v == lab]
        n_val = round(fraction * len(idx))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        for i in rng.permutation(idx)[:n_val]:
            out[int(i)] = "val"
    return out


def load_chips(data: str | Path, *, bands: Sequence[str] | None = None,
               class_names: Sequence[str] | None = None, splits: Sequence[str] | None = None,
               val_fraction: float = 0.15, seed: int = 0,
               default_bands: Sequence[str] | None = None) -> LabelledChips:
    """Read labelled chips (see the module docstring) into memory.

    Args:
        data: A folder (labels.csv inside, or a folder per class) or a labels ``.csv`` file.
        bands: Band names in file order; default: the GeoTIFF band descriptions.
        class_names: Expected classes in logit order (e.g. a bundle's); default: sorted labels.
        splits: Only load these splits (e.g. ``["test"]`` to evaluate); default: all.
        val_fraction: Share of each class drawn for val when the data has no split information.
        seed: Seed of that draw.
        default_bands: Names to assume when the chips have no band descriptions, ``bands`` is
            not given and the band count matches (e.g. the bundle's bands when evaluating).

    Raises:
        RasterNotFoundError: The folder, CSV or a listed chip does not exist.
        InputError: Bad CSV, unknown label, class without training chips, chips of mixed shapes,
            a file in both the training and the test split, or no chips at all.
        BandCountMismatchError: ``bands`` does not match the chips' band count.
        ConfigError: Bands are unnamed (no descriptions and no ``bands``).
    """
    import rasterio

    data = Path(data)
    if not data.exists():
        raise RasterNotFoundError(f"{data}: expected a chip folder or a labels .csv, found nothing"
                                  " there; check --data")
    csv_path = data if data.is_file() else data / "labels.csv"
    if csv_path.is_file():
        if csv_path.suffix.lower() != ".csv":
            raise InputError(f"{data}: expected a folder or a labels .csv file, found"
                             f" {csv_path.suffix or 'a file without suffix'}; pass --data DIR")
        root, layout = csv_path.parent, f"labels CSV {csv_path.name}"
        rows = _rows_from_csv(csv_path)
        found_classes = sorted({lab for _, lab, _ in rows})
    else:
        root, layout = data, "folder per class"
        rows, found_classes = _rows_from_folders(data)
        if not found_classes:
            raise InputError(f"{data}: expected labels.csv or one sub-folder per class with .tif"
                             " chips, found neither; see `geofg train classifier --help`")
    notes = []
    names = list(class_names) if class_names is not None else found_classes
    unknown = sorted({lab for _, lab, _ in rows} - set(names))
    if unknown:
        raise InputError(f"{csv_path if csv_path.is_file() else data}: labels {unknown} are not"
                         f" classes of the model (expected {names}); fix the labels or the model")
    if all(s is None for _, _, s in rows):
        drawn = _draw_val([lab for _, lab, _ in rows], val_fraction, seed)
        rows = [(f, lab, s) for (f, lab, _), s in zip(rows, drawn, strict=True)]
        notes.append(f"no split given: drew a stratified val split of {val_fraction:.0%}"
                     f" (seed {seed}); no test split")
    if any(s is None for _, _, s in rows):
        raise InputError(f"{csv_path}: some rows have a split and some do not; give every row a"
                         " split (train, val or test)")
    by_split: dict[str, set[str]] = {}
    for f, _, s in rows:
        by_split.setdefault(str(s), set()).add(str(Path(f)))
    for other in ("train", "val"):
        both = sorted(by_split.get(other, set()) & by_split.get("test", set()))
        if both:
            raise InputError(f"{layout}: {len(both)} file(s) are in the {other} split and in the"
                             f" test split (e.g. {both[0]}); a test chip must never be used for"
                             " training or tuning; fix the split column")
    want = set(splits) if splits is not None else None
    if want is None or "train" in want:
        counts = dict.fromkeys(names, 0)
        for _, lab, s in rows:
            if s == "train":
                counts[lab] += 1
        empty = [n for n, c in counts.items() if c == 0]
        if empty:
            raise InputError(f"{layout} in {root}: classes {empty} have no training chips;"
                             " expected at least one per class; add chips or remove the class")
    for f, _, _ in rows:
        p = root / f
        if not p.is_file():
            raise RasterNotFoundError(f"{layout} in {root}: names a file that does not exist:"
                                      f" {f}; fix the labels or add the file")
    chosen = [r for r in rows if want is None or r[2] in want]
    if not chosen:
        raise InputError(f"{layout} in {root}: expected chips in split(s) {sorted(want or [])},"
                         f" found splits {sorted(by_split)}; pass another --split")
    arrays, descs, dtype, shape = [], None, None, None
    for f, _, _ in chosen:
        try:
            with rasterio.open(root / f) as ds:
                arr = ds.read()
                d = list(ds.descriptions)
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"{root / f}: expected a readable GeoTIFF chip, found an error"
                             f" ({str(err).splitlines()[0]}); replace the file") from None
        if shape is None:
            shape, dtype, descs = arr.shape, arr.dtype, d
        elif arr.shape != shape:
            raise InputError(f"{root / f}: expected a chip of {shape[0]} bands x {shape[1]} x"
                             f" {shape[2]} px like {chosen[0][0]}, found {arr.shape}; all chips"
                             " must have one shape")
        arrays.append(arr.astype(dtype, copy=False))
    assert shape is not None
    assert dtype is not None
    assert descs is not None
    if shape[1] != shape[2]:
        raise InputError(f"{root / chosen[0][0]}: expected square chips, found {shape[1]} x"
                         f" {shape[2]} px; crop the chips to squares")
    if bands is not None:
        bands = list(bands)
        if len(bands) != shape[0]:
            raise BandCountMismatchError(
                f"{root / chosen[0][0]}: --bands names {len(bands)} bands, the chips have"
                f" {shape[0]}; give one name per band in file order")
    elif all(descs):
        bands = [str(b) for b in descs]
    elif default_bands is not None and len(default_bands) == shape[0]:
        bands = list(default_bands)
        notes.append(f"chips have no band descriptions: assumed the model's bands {bands}")
    else:
        raise ConfigError(f"{root / chosen[0][0]}: expected named bands, found no band"
                          f" descriptions on its {shape[0]} bands; name them with --bands, e.g."
                          " --bands B02,B03,B04,B08")
    x = np.stack(arrays)
    if "test" in by_split and (want is None or {"test", "train"} <= want):
        import hashlib

        digest = [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
        held = {digest[i] for i, r in enumerate(chosen) if r[2] == "test"}
        dup = [r[0] for i, r in enumerate(chosen) if r[2] in ("train", "val") and digest[i] in held]
        if dup:
            raise InputError(f"{layout} in {root}: {len(dup)} train/val chip(s) have the same"
                             f" pixels as a test chip (e.g. {dup[0]}); a test chip must never be"
                             " used for training or tuning; remove the duplicates")
    out: dict[str, ChipSet] = {}
    for split in [s for s in SPLITS if s in by_split] + sorted(set(by_split) - set(SPLITS)):
        if want is not None and split not in want:
            continue
        idx = [i for i, r in enumerate(chosen) if r[2] == split]
        out[split] = ChipSet(x[idx], np.array([names.index(chosen[i][1]) for i in idx],
                                              dtype=np.int64), [chosen[i][0] for i in idx])
    return LabelledChips(out, names, bands, root, str(np.dtype(dtype)), layout, notes)

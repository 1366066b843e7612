"""Pictures and tables made from a finished mosaic.

The quicklook is built chunk row by chunk row with a stride, so its memory is bounded by one row
of chunks at reduced resolution, never by the mosaic's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont

from geofg.io.mosaic import DECODE_ERRORS, FILL, damaged_chunk_error, open_checked
from geofg.io.atomic import atomic_path

NODATA_RGB = (0, 0, 0)

#: Classes of an index layer's quicklook (a layer with CF ``scale_factor``/``add_offset``: ``ndvi``),
#: each value below its upper bound and at or above the one before.
INDEX_BINS: tuple[tuple[float, str, str], ...] = (
    (0.0, "NDVI below 0 (water, snow, cloud edges)", "#2c5d8f"),
    (0.2, "NDVI 0 to 0.2 (bare soil, built)", "#dfc27d"),
    (0.4, "NDVI 0.2 to 0.4 (sparse or winter cover)", "#c2e699"),
    (0.6, "NDVI 0.4 to 0.6", "#78c679"),
    (float("inf"), "NDVI 0.6 and above (dense green cover)", "#238443"),
)


def index_bins(scale: float, offset: float) -> np.ndarray:
    """uint8 codes (value = code * ``scale`` + ``offset``) -> the :data:`INDEX_BINS` index; 255 stays.

    Examples:
        >>> index_bins(0.01, -1.0)[[0, 99, 100, 119, 120, 140, 160, 200, 255]].tolist()
        [0, 0, 1, 1, 2, 3, 4, 4, 255]
    """
    value = np.round(np.arange(FILL) * scale + offset, 6)
    out = np.full(256, FILL, np.uint8)
    out[:FILL] = np.searchsorted([b for b, _, _ in INDEX_BINS], value, side="right")
    return out


def _rgb(hexcolour: str) -> tuple[int, int, int]:
    h = hexcolour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def read_strided(arr: zarr.Array, step: int, chunk: int) -> np.ndarray:
    """Read ``arr[::step, ::step]`` one chunk row at a time."""
    h, w = arr.shape
    rows = []
    for r0 in range(0, h, chunk):
        r1 = min(h, r0 + chunk)
        first = r0 + (-r0) % step
        if first >= r1:
            continue
        rows.append(arr[first:r1:step, ::step])
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), np.uint8)


def quicklook_path(mosaic: Path | str) -> Path:
    """Where the quicklook of ``mosaic`` goes: beside it, ``OUT.zarr`` -> ``OUT.zarr.png``."""
    return Path(f"{mosaic}.png")


def write_quicklook(mosaic: Path | str, png: Path, layer: str = "class", max_side: int = 1600) -> Path:
    """Write a PNG of ``layer`` coloured by its legend, with the legend drawn beside it.

    Where the mosaic has a ``mask`` layer, its cloud, shadow and snow/ice pixels (no data in the
    other layers) are painted in the mask's colours and listed in the legend.

    Raises:
        MosaicDamagedError: a chunk (or the metadata) cannot be decoded; names the chunk, its
            unit and the fix (nothing is written).
    """
    group = open_checked(mosaic)
    arr = group[layer]
    index = "scale_factor" in arr.attrs  # an index layer (ndvi): shown in the classes of INDEX_BINS
    if index:
        names = [n for _, n, _ in INDEX_BINS]
        colours = [_rgb(c) for _, _, c in INDEX_BINS]
    else:
        names = list(arr.attrs["class_names"])
        colours = [_rgb(c) for c in arr.attrs["colours"]]
    chunk = group.attrs["geofg:grid"]["chunk"]
    step = max(1, -(-max(arr.shape) // max_side))
    try:
        small = read_strided(arr, step, chunk)
    except DECODE_ERRORS as e:
        raise damaged_chunk_error(mosaic, layer, arr, e) from None
    if index:
        small = index_bins(float(arr.attrs["scale_factor"]), float(arr.attrs["add_offset"]))[small]
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = NODATA_RGB
    for i, c in enumerate(colours):
        lut[i] = c
    rgb = lut[small]
    present = set(np.unique(small[small != FILL]).tolist())
    if layer != "mask" and "mask" in group:
        marr = group["mask"]
        codes = read_strided(marr, step, chunk)
        for code, (n, c) in enumerate(zip(marr.attrs["class_names"], marr.attrs["colours"], strict=True)):
            if code and (codes == code).any():
                rgb[(codes == code) & (small == FILL)] = _rgb(c)
                names.append(f"{n} (masked)")
                colours.append(_rgb(c))
                present.add(len(names) - 1)
    img = Image.fromarray(rgb, "RGB")
    font = ImageFont.load_default()
    row_h, pad = 18, 8
    legend_w = 12 + max(len(n) for n in names) * 7 + 60
    h = max(img.height, pad * 2 + row_h * (len(names) + 2))
    canvas = Image.new("RGB", (img.width + legend_w, h), (255, 255, 255))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = img.width + pad
    draw.text((x0, pad), f"{layer} ({step}x reduced)", fill=(0, 0, 0), font=font)
    for i, (n, c) in enumerate(zip(names, colours, strict=True)):
        y = pad + row_h * (i + 1)
        draw.rectangle([x0, y, x0 + 12, y + 12], fill=c, outline=(0, 0, 0))
        mark = "" if i in present else " (absent)"
        draw.text((x0 + 18, y), n + mark, fill=(0, 0, 0), font=font)
    y = pad + row_h * (len(names) + 1)
    draw.rectangle([x0, y, x0 + 12, y + 12], fill=NODATA_RGB, outline=(0, 0, 0))
    draw.text((x0 + 18, y), "no data", fill=(0, 0, 0), font=font)
    with atomic_path(png) as tmp:
        canvas.save(tmp, format="PNG")
    return png

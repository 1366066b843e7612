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
    names = list(arr.attrs["class_names"])
    colours = [_rgb(c) for c in arr.attrs["colours"]]
    chunk = group.attrs["geofg:grid"]["chunk"]
    step = max(1, -(-max(arr.shape) // max_side))
    try:
        small = read_strided(arr, step, chunk)
    except DECODE_ERRORS as e:
        raise damaged_chunk_error(mosaic, layer, arr, e) from None
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

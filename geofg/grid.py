"""Tiling math: pure functions over small frozen values. No I/O, no arrays.

Vocabulary (rasterio's): a *window* is ``(row_off, col_off, height, width)`` in pixels of the input
raster grid, which is also the mosaic grid. Offsets may be negative and windows may reach past the
raster's far edges: such parts are read *boundless* (nodata-padded).

* A **work unit** owns exactly one output chunk of the mosaic: its *core* is that chunk's window,
  clipped to the raster. Cores partition the raster and no two units touch one chunk, so writes need
  no locks and a unit can be redone without harm.
* A unit's *read* window is its core grown by ``halo`` pixels on every side (not clipped). The model
  sees the halo as context; only the core is written.
* Model *tiles* cover the read window with ``ceil((length - tile) / stride) + 1`` tiles per axis, the
  last one flush with the far edge, so every pixel is predicted. A read window shorter than one tile
  gets one tile and is padded up to the tile size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geofg.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Window:
    """A pixel window ``(row_off, col_off, height, width)``; height and width are positive."""

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(
                f"window size must be positive, got height={self.height} width={self.width}"
            )

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    def intersection(self, other: Window) -> Window | None:
        """Return the overlap of two windows, or None when they do not overlap.

        Examples:
            >>> Window(0, 0, 10, 10).intersection(Window(5, -3, 10, 10))
            Window(row_off=5, col_off=0, height=5, width=7)
            >>> Window(0, 0, 2, 2).intersection(Window(2, 0, 2, 2)) is None
            True
        """
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: Window) -> tuple[slice, slice]:
        """Return the (row, col) slices of this window inside an array covering ``outer``.

        Examples:
            >>> Window(5, 6, 2, 3).relative_to(Window(4, 4, 10, 10))
            (slice(1, 3, None), slice(2, 5, None))
        """
        r, c = self.row_off - outer.row_off, self.col_off - outer.col_off
        return slice(r, r + self.height), slice(c, c + self.width)

    def grow(self, px: int) -> Window:
        """Return the window grown by ``px`` pixels on every side (not clipped)."""
        return Window(self.row_off - px, self.col_off - px, self.height + 2 * px, self.width + 2 * px)

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.height * self.width


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """One output chunk: its chunk index, the core it writes and the window it reads."""

    row: int
    col: int
    core: Window
    read: Window

    @property
    def id(self) -> str:
        """A stable id derived from the chunk index, e.g. ``"r0003_c0012"``."""
        return f"r{self.row:04d}_c{self.col:04d}"


def chunk_count(length: int, chunk: int) -> int:
    """Return how many chunks of ``chunk`` pixels cover ``length`` pixels.

    Examples:
        >>> chunk_count(1000, 512), chunk_count(1024, 512), chunk_count(1, 512)
        (2, 2, 1)
    """
    return -(-length // chunk)


def plan_units(height: int, width: int, chunk: int, halo: int) -> list[WorkUnit]:
    """Plan one work unit per output chunk, row-major.

    Args:
        height: raster rows (> 0).
        width: raster columns (> 0).
        chunk: mosaic chunk edge in pixels (> 0); the unit cores are the chunks, clipped.
        halo: context pixels read around each core (>= 0).

    Returns:
        Units whose cores partition the raster.

    Raises:
        ConfigError: on non-positive sizes or a negative halo.

    Examples:
        >>> [u.id for u in plan_units(3, 5, 2, 1)]
        ['r0000_c0000', 'r0000_c0001', 'r0000_c0002', 'r0001_c0000', 'r0001_c0001', 'r0001_c0002']
        >>> plan_units(3, 5, 2, 1)[-1].core
        Window(row_off=2, col_off=4, height=1, width=1)
    """
    if height <= 0 or width <= 0:
        raise ConfigError(f"raster size must be positive, got {height}x{width}")
    if chunk <= 0:
        raise ConfigError(f"chunk size must be positive, got {chunk}")
    if halo < 0:
        raise ConfigError(f"halo must be >= 0, got {halo}")
    units = []
    for row in range(chunk_count(height, chunk)):
        r0 = row * chunk
        h = min(chunk, height - r0)
        for col in range(chunk_count(width, chunk)):
            c0 = col * chunk
            core = Window(r0, c0, h, min(chunk, width - c0))
            units.append(WorkUnit(row, col, core, core.grow(halo)))
    return units


def tile_offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Return tile start offsets covering ``length`` pixels with tiles of ``tile`` pixels.

    Neighbouring tiles overlap by at least ``overlap`` pixels; the count per axis is
    ``ceil((length - tile) / (tile - overlap)) + 1`` (TorchGeo's ``tile_to_chips``), the starts are
    spread evenly and the last tile ends exactly at ``length``. When ``length <= tile`` there is one
    tile at 0 (the caller pads the data up to the tile).

    Examples:
        >>> tile_offsets(10, 4, 1)
        [0, 3, 6]
        >>> tile_offsets(11, 4, 1)
        [0, 2, 5, 7]
        >>> tile_offsets(3, 8, 2)
        [0]
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ConfigError(f"need 0 <= overlap < tile, got tile={tile} overlap={overlap}")
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def aligned_chunk(tile: int, halo: int, overlap: int, limit: int = 1024) -> int | None:
    """The largest unit (chunk) edge <= ``limit`` whose read window is a whole number of tiles.

    A unit reads ``chunk + 2 * halo`` pixels a side and cuts them into tiles of ``tile`` px that
    overlap by ``overlap`` (:func:`tile_offsets`): step ``tile - overlap``. When the window is
    ``tile + (k - 1) * step`` the ``k`` tiles a side meet with exactly that overlap; any other size
    needs one more tile a side, squeezed closer. ``None`` when one tile already covers a
    ``limit`` unit with its halo (nothing to align) or no such chunk is >= 16.

    Examples:
        >>> aligned_chunk(256, 16, 32)   # TorchGeo's 256 px chips, 32 px overlap: 4 x 4 per unit
        896
        >>> aligned_chunk(512, 32, 64)
        896
        >>> aligned_chunk(1088, 32, 64) is None   # the default: one tile per unit
        True
    """
    step = tile - overlap
    if step <= 0 or tile >= limit + 2 * halo:
        return None
    k = (limit + 2 * halo - tile) // step + 1
    chunk = tile + (k - 1) * step - 2 * halo
    return chunk if chunk >= 16 else None


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """Return the model tiles covering an array of ``height`` x ``width`` (offsets from 0).

    Tiles may reach past the array only when the array is smaller than one tile.

    Examples:
        >>> plan_tiles(6, 3, 4, 2)
        [Window(row_off=0, col_off=0, height=4, width=4), Window(row_off=2, col_off=0, height=4, width=4)]
    """
    return [
        Window(r, c, tile, tile)
        for r in tile_offsets(height, tile, overlap)
        for c in tile_offsets(width, tile, overlap)
    ]

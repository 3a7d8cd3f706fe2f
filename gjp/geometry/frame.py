"""The tile-local frame (docs/FORMATS.md): x east, y north, origin at the tile's south-west
corner, 1.0 = the tile's width. Inside one tile, fractional Web-Mercator coordinates are
exact enough: the projection is conformal, so the frame is a scaled Mercator plane."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gjp import grid


def tile_xy(tiles: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Tile x and y of each row's ``tile`` name (a file holds ≤ 16 distinct names: each
    is parsed once)."""
    codes, names = dictionary_codes(tiles)
    xy = np.array([grid.parse_tile_name(n)[1:] for n in names], dtype=np.int64).reshape(-1, 2)
    return xy[codes, 0], xy[codes, 1]


def dictionary_codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """``(codes, distinct values)`` of a low-cardinality column, ``values[i] ==
    distinct[codes[i]]``, without a Python object per row."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def local_coords(lonlat: np.ndarray, x: np.ndarray, y: np.ndarray, zoom: int) -> np.ndarray:
    """Lon/lat coordinates ``[N,2]`` → the local frame of tile ``(x[i], y[i])`` each.

    Coordinates are clamped to [0, 1]: clipped geometry lies on the tile border up to the
    round-off of the lon/lat round trip (~1e-11 tile units).
    """
    fx, fy = grid.lonlat_to_fractional(lonlat[:, 0], lonlat[:, 1], zoom)
    local = np.column_stack([fx - x, (y + 1) - fy])
    np.clip(local, 0.0, 1.0, out=local)
    return local


def metres_to_units(metres: float, y: np.ndarray, zoom: int) -> np.ndarray:
    """A length in metres as tile units, per row (tile rows differ in ground width)."""
    return metres / grid.tile_width_m(y, zoom)

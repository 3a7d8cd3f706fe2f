"""The tile-local frame (DESIGN §1): x east, y north, origin at the tile's south-west
corner, 1.0 = the tile's width. Inside one tile, fractional Web-Mercator coordinates are
exact enough: the projection is conformal, so the frame is a scaled Mercator plane."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import shapely

from gjp import grid


def tile_xy(tiles: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Tile x and y of each row's ``tile`` name."""
    names, inverse = np.unique(np.asarray(tiles.to_pylist(), dtype=object), return_inverse=True)
    xy = np.array([grid.parse_tile_name(n)[1:] for n in names], dtype=np.int64).reshape(-1, 2)
    return xy[inverse, 0], xy[inverse, 1]


def lonlat_to_local(geoms: np.ndarray, x: np.ndarray, y: np.ndarray, zoom: int) -> np.ndarray:
    """Geometries (lon/lat) → the local frame of each row's tile ``(x, y)``.

    Coordinates are clamped to [0, 1]: clipped geometry lies on the tile border up to the
    round-off of the lon/lat round trip (~1e-11 tile units).
    """
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    fx, fy = grid.lonlat_to_fractional(coords[:, 0], coords[:, 1], zoom)
    local = np.column_stack([fx - x[index], (y[index] + 1) - fy])
    np.clip(local, 0.0, 1.0, out=local)
    return shapely.set_coordinates(geoms.copy(), local)  # replaces elements, not the inputs


def metres_to_units(metres: float, y: np.ndarray, zoom: int) -> np.ndarray:
    """A length in metres as tile units, per row (tile rows differ in ground width)."""
    return metres / grid.tile_width_m(y, zoom)

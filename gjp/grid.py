"""Web-Mercator slippy-tile math (XYZ scheme, y counted from the north).

Everything is vectorised over numpy arrays. Inside gjp, geometry work happens in
*fractional tile coordinates* at the working zoom: ``fx, fy`` such that tile ``(x, y)`` is
the square ``[x, x+1] × [y, y+1]``. In those units tile borders are straight lines and a
tile is exactly 1 × 1, so clipping and the local frame are exact (the projection is
conformal; no per-point trigonometry beyond the one projection).
"""

from __future__ import annotations

import math
import re

import numpy as np

#: Web-Mercator sphere radius (metres) and the equator's length.
EARTH_RADIUS_M = 6378137.0
EQUATOR_M = 2.0 * math.pi * EARTH_RADIUS_M
#: Latitude limit of the square Web-Mercator world.
MAX_LATITUDE = 85.0511287798066

DEFAULT_ZOOM = 16
#: Tiles are stored in groups of 2**GROUP_LEVELS × 2**GROUP_LEVELS (4×4): one file per
#: tile at ``zoom - GROUP_LEVELS``, which is also the unit of the train/val/test split.
GROUP_LEVELS = 2

#: A tile's name, ``z_x_y``; group files are named after their group tile the same way.
TILE_NAME = r"(\d{1,2})_(\d+)_(\d+)"
_NAME = re.compile(f"^{TILE_NAME}$")


def lonlat_to_fractional(lon, lat, zoom: int):
    """Fractional tile coordinates ``(fx, fy)`` of lon/lat degrees at ``zoom``."""
    n = float(2**zoom)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.clip(np.asarray(lat, dtype=np.float64), -MAX_LATITUDE, MAX_LATITUDE)
    fx = (lon + 180.0) / 360.0 * n
    fy = (1.0 - np.arcsinh(np.tan(np.radians(lat))) / math.pi) / 2.0 * n
    return fx, fy


def fractional_to_lonlat(fx, fy, zoom: int):
    """Inverse of :func:`lonlat_to_fractional`."""
    n = float(2**zoom)
    fx = np.asarray(fx, dtype=np.float64)
    fy = np.asarray(fy, dtype=np.float64)
    lon = fx / n * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(math.pi * (1.0 - 2.0 * fy / n))))
    return lon, lat


def tile_of(lon, lat, zoom: int):
    """Tile ``(x, y)`` holding each lon/lat. Intervals are half-open: a point on a border
    belongs to the tile east of it (x) and south of it (y), as ``floor`` decides."""
    fx, fy = lonlat_to_fractional(lon, lat, zoom)
    n = 2**zoom
    x = np.clip(np.floor(fx), 0, n - 1).astype(np.int64)
    y = np.clip(np.floor(fy), 0, n - 1).astype(np.int64)
    return x, y


def tile_bounds(x: int, y: int, zoom: int) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` of tile ``(x, y)`` in degrees."""
    west, north = fractional_to_lonlat(x, y, zoom)
    east, south = fractional_to_lonlat(x + 1, y + 1, zoom)
    return float(west), float(south), float(east), float(north)


def tile_width_m(y, zoom: int):
    """Ground width in metres of tiles in row ``y`` (at the row's middle latitude).

    A z16 tile is 611.5·cos(lat) m wide: about 480–510 m in the continental US and about
    300 m only near 60°N.
    """
    _, lat = fractional_to_lonlat(0.0, np.asarray(y, dtype=np.float64) + 0.5, zoom)
    return EQUATOR_M * np.cos(np.radians(lat)) / 2**zoom


def tile_name(zoom: int, x: int, y: int) -> str:
    return f"{zoom}_{x}_{y}"


def parse_tile_name(name: str) -> tuple[int, int, int]:
    """``"16_18052_25957"`` → ``(16, 18052, 25957)``; raises ``ValueError`` on bad names."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"not a tile name (expected z_x_y, e.g. 16_18052_25957): {name!r}")
    z, x, y = (int(g) for g in m.groups())
    if z > 30 or x >= 2**z or y >= 2**z:
        raise ValueError(f"tile out of range for zoom {z}: {name!r}")
    return z, x, y


def group_of(x, y, levels: int = GROUP_LEVELS):
    """The group tile (at ``zoom - levels``) holding tile ``(x, y)``."""
    return np.asarray(x) >> levels, np.asarray(y) >> levels


def group_name(zoom: int, x: int, y: int, levels: int = GROUP_LEVELS) -> str:
    """Name of the group file holding tile ``(zoom, x, y)``, e.g. ``14_4513_6489``."""
    return tile_name(zoom - levels, int(x) >> levels, int(y) >> levels)


def group_members(zoom: int, gx: int, gy: int, levels: int = GROUP_LEVELS) -> list[str]:
    """Names of the tiles (at ``zoom``) in group ``(gx, gy)``, row by row from the NW."""
    side = 2**levels
    return [tile_name(zoom, gx * side + dx, gy * side + dy) for dy in range(side) for dx in range(side)]

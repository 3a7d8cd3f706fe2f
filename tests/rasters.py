"""GeoTIFFs made by the tests (torchgeo's data.py idea): small, exact, in any CRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_points

from gjp.imagery.chips import mercator_bounds


def write_raster(path: Path, data: np.ndarray, crs: str, transform, nodata=0, tags=None) -> Path:
    """``data`` is (bands, rows, cols) uint8."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": "uint8", "crs": crs, "transform": transform, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if data.shape[0] == 4:  # R, G, B, NIR as real NAIP: the 4th band is not alpha
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
        if tags:
            dst.update_tags(**tags)
    return path


def tile_aligned(path: Path, x: int, y: int, zoom: int, size: int, data_fn, tiles=(1, 1)) -> Path:
    """A raster in EPSG:3857 whose pixels are exactly the chip pixels of tiles (x, y) …
    (x + tiles[0] - 1, y + tiles[1] - 1): warping it onto the tile grid is the identity.
    ``data_fn(rows, cols)`` gives the (3, rows, cols) uint8 pixels."""
    west, _, east, north = mercator_bounds(x, y, zoom)
    step = (east - west) / size
    rows, cols = size * tiles[1], size * tiles[0]
    r, c = np.mgrid[0:rows, 0:cols]
    return write_raster(path, data_fn(r, c), "EPSG:3857", from_origin(west, north, step, step))


def utm_naip(path: Path, lon: float, lat: float, width_m: float, height_m: float, res: float = 2.0,
             epsg: int = 26914, fill=(90, 120, 80, 200), square=None, date_tag=None) -> Path:
    """A 4-band (R, G, B, NIR) uint8 raster in a UTM CRS like real NAIP, centred on lon/lat,
    nodata = 0. ``square=(lon, lat, side_m, value)`` paints a bright square there."""
    crs = f"EPSG:{epsg}"
    (cx,), (cy,) = transform_points("EPSG:4326", crs, [lon], [lat])
    cols, rows = int(width_m / res), int(height_m / res)
    left, top = cx - width_m / 2, cy + height_m / 2
    data = np.empty((4, rows, cols), dtype=np.uint8)
    for b in range(4):
        data[b] = fill[b]
    if square is not None:
        slon, slat, side, value = square
        (sx,), (sy,) = transform_points("EPSG:4326", crs, [slon], [slat])
        c0, r0 = int((sx - side / 2 - left) / res), int((top - (sy + side / 2)) / res)
        n = int(side / res)
        data[:3, r0:r0 + n, c0:c0 + n] = value
    tags = {"TIFFTAG_DATETIME": date_tag} if date_tag else None
    return write_raster(path, data, crs, from_origin(left, top, res, res), nodata=0, tags=tags)

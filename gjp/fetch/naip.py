"""``gjp fetch naip``: NAIP aerial imagery from a STAC API (the Planetary Computer's by
default) for a bounding box or for the tiles an earlier ``gjp tile`` wrote.

NAIP is flown state by state every two or three years; each image covers one USGS
*quarter quad* (3.75′ × 3.75′, ids like ``m_4709963_se``). For every quarter quad the
newest acquisition is kept. Each image is saved as ``<item id>.tif`` with its STAC item as
``<item id>.json`` beside it (unsigned: signed URLs expire and hold access tokens).
With ``clip``, only the part of each image covering the requested tiles is read over HTTP
(GDAL range requests on the cloud-optimised GeoTIFF) instead of the whole 200–500 MB file.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from gjp import grid
from gjp.errors import GjpError
from gjp.io import write_json
from gjp.net import download, session
from gjp.parallel import map_jobs
from gjp.ui import QUIET, Reporter

STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
COLLECTION = "naip"
ASSET = "image"
#: urllib3 back-off factor for STAC requests (seconds; doubled per retry).
STAC_BACKOFF = 0.5
_QUARTER_QUAD = re.compile(r"m_\d{7}_(?:ne|nw|se|sw)", re.IGNORECASE)


@dataclass
class NaipReport:
    found: int = 0            # items the search returned
    quarter_quads: int = 0    # distinct quarter quads among them (= images kept)
    downloaded: int = 0
    up_to_date: int = 0
    bytes: int = 0
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return (f"NAIP: {self.found} items found, newest of {self.quarter_quads} quarter quads kept; "
                f"{self.downloaded} fetched ({self.bytes / 1e6:.1f} MB), {self.up_to_date} already up to date")


def quarter_quad(item_id: str) -> str:
    """The quarter quad an item covers (its id when the id does not say)."""
    m = _QUARTER_QUAD.search(item_id)
    return m.group(0).lower() if m else item_id


def newest_per_quarter_quad(items: list) -> list:
    """For each quarter quad, the item with the latest acquisition (ties: largest id)."""
    best: dict[str, object] = {}
    for item in items:
        key = quarter_quad(item.id)
        current = best.get(key)
        if current is None or (_when(item), item.id) > (_when(current), current.id):
            best[key] = item
    return sorted(best.values(), key=lambda item: item.id)


def _when(item) -> str:
    dt = item.datetime or item.common_metadata.start_datetime
    return dt.isoformat() if dt else ""


def datetime_range(year: int | None, since: str | None) -> str | None:
    if year is not None and since is not None:
        raise GjpError("give --year or --since, not both")
    if year is not None:
        return f"{year}-01-01/{year}-12-31"
    if since is not None:
        try:
            date.fromisoformat(since)
        except ValueError as err:
            raise GjpError(f"--since {since!r}: expected a date like 2020-01-01") from err
        return f"{since}/.."
    return None


def tiles_area(tiles_dir: str | Path) -> tuple[tuple[float, float, float, float], list[tuple[float, float, float, float]]]:
    """The lon/lat bounding box of the tiles in a ``gjp tile`` output, and each tile's bounds."""
    import pyarrow.parquet as pq

    from gjp.geoparquet import list_group_files

    names: set[str] = set()
    for path in list_group_files(tiles_dir):
        names.update(pq.read_table(path, columns=["tile"]).column("tile").to_pylist())
    bounds = []
    for name in sorted(names):
        z, x, y = grid.parse_tile_name(name)
        bounds.append(grid.tile_bounds(x, y, z))
    b = np.array(bounds)
    return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())), bounds


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise GjpError(f"--bbox {text!r}: expected W,S,E,N in degrees, e.g. -99.19,47.00,-99.12,47.04") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise GjpError(f"--bbox {text!r}: expected W < E and S < N within ±180, ±90")
    return w, s, e, n


def search(stac_url: str, bbox, datetime: str | None, max_items: int | None) -> list:
    """NAIP items intersecting ``bbox`` (retrying transient HTTP errors)."""
    import pystac_client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(total=4, backoff_factor=STAC_BACKOFF, status_forcelist=[429, 500, 502, 503, 504],
                  allowed_methods=None)
    try:
        client = pystac_client.Client.open(stac_url, stac_io=StacApiIO(max_retries=retry, timeout=60))
        found = client.search(collections=[COLLECTION], bbox=list(bbox), datetime=datetime, max_items=max_items)
        return list(found.items())
    except APIError as err:
        text = str(err).strip()
        if "Max retries exceeded" in text or "Failed to establish" in text:
            reason = "refused" if "refused" in text or "Errno 111" in text else "failed"
            raise GjpError(f"{stac_url}: cannot reach the STAC API (connection {reason}, after retries)") from err
        raise GjpError(f"{stac_url}: STAC API error ({text.splitlines()[0][:150] if text else type(err).__name__})") from err
    except Exception as err:  # requests / urllib3 failures after the retries
        if type(err).__module__.split(".")[0] in ("requests", "urllib3"):
            raise GjpError(f"{stac_url}: cannot reach the STAC API ({type(err).__name__})") from err
        raise


def _sign(item):
    import planetary_computer

    return planetary_computer.sign(item)


def fetch_naip(out_dir: str | Path = "raw/naip", *, bbox=None, tiles_dir=None, stac_url: str = STAC_URL,
               year: int | None = None, since: str | None = None, max_items: int | None = None,
               sign: bool = True, clip: bool = False, workers: int = 4, retries: int = 5,
               overwrite: bool = False, reporter: Reporter = QUIET) -> NaipReport:
    """Search, pick the newest image per quarter quad, and download (or clip) each."""
    if (bbox is None) == (tiles_dir is None):
        raise GjpError("give the area as --bbox W,S,E,N or as --tiles DIR (one of them)")
    tile_bounds = None
    if tiles_dir is not None:
        bbox, tile_bounds = tiles_area(tiles_dir)
    items = search(stac_url, bbox, datetime_range(year, since), max_items)
    report = NaipReport(found=len(items))
    if not items:
        raise GjpError(f"{stac_url}: no NAIP imagery (collection {COLLECTION!r}) found for bbox "
                       f"{','.join(f'{v:.5f}' for v in bbox)}" + (f" in {year}" if year else ""))
    kept = newest_per_quarter_quad(items)
    report.quarter_quads = len(kept)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    http = session()

    def fetch_one(item):
        signed = _sign(item) if sign else item
        if ASSET not in signed.assets:
            raise GjpError(f"{stac_url}: item {item.id} has no {ASSET!r} asset")
        href = signed.assets[ASSET].href
        dest = out_dir / f"{item.id}.tif"
        if clip:
            result = _clip(href, dest, item, tile_bounds or [tuple(bbox)], overwrite)
        else:
            result = download(href, dest, http=http, retries=retries, reporter=reporter)
        write_json(out_dir / f"{item.id}.json", item.to_dict(), overwrite=True)
        return result

    bar = reporter.progress(total=len(kept), desc="NAIP images", unit=" image")
    for result in map_jobs(fetch_one, kept, workers, bar):
        report.files.append(result.path)
        if result.skipped:
            report.up_to_date += 1
        else:
            report.downloaded += 1
            report.bytes += result.bytes
    bar.close()
    return report


def _clip(href: str, dest: Path, item, tile_bounds, overwrite: bool):
    """Read only the window of a remote COG that covers the requested tiles and save it as
    a local tiled GeoTIFF."""
    import rasterio
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    from gjp.net import Download

    if dest.exists() and not overwrite:
        return Download(dest, 0, True)
    w, s, e, n = item.bbox if item.bbox else (-180, -90, 180, 90)
    wanted = [b for b in tile_bounds if b[0] < e and b[2] > w and b[1] < n and b[3] > s]
    if not wanted:
        wanted = list(tile_bounds)
    b = np.array(wanted)
    area = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "4",
           "GDAL_HTTP_RETRY_DELAY": "1", "CPL_VSIL_CURL_USE_HEAD": "NO"}
    tmp = dest.with_name(dest.name + ".part")
    try:
        with rasterio.Env(**env), rasterio.open(href) as src:
            left, bottom, right, top = transform_bounds("EPSG:4326", src.crs, *area, densify_pts=21)
            exact = from_bounds(left, bottom, right, top, src.transform)
            col0, row0 = math.floor(exact.col_off), math.floor(exact.row_off)
            col1, row1 = math.ceil(exact.col_off + exact.width), math.ceil(exact.row_off + exact.height)
            window = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0).intersection(
                rasterio.windows.Window(0, 0, src.width, src.height))
            data = src.read(window=window)
            profile = src.profile.copy()
            profile.update(driver="GTiff", width=int(window.width), height=int(window.height),
                           transform=src.window_transform(window), compress="deflate", tiled=True,
                           blockxsize=256, blockysize=256)
            with rasterio.open(tmp, "w", **profile) as out:
                out.write(data)
    except rasterio.errors.RasterioIOError as err:
        tmp.unlink(missing_ok=True)
        raise GjpError(f"{href.split('?')[0]}: cannot read the image over HTTP ({err})") from err
    except rasterio.errors.WindowError:
        tmp.unlink(missing_ok=True)
        raise GjpError(f"{href.split('?')[0]}: the image does not cover the requested tiles") from None
    os.replace(tmp, dest)
    return Download(dest, int(data.nbytes), False)

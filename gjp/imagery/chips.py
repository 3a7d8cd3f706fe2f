"""``gjp tile`` for imagery: aerial rasters → one RGB chip per z16 tile.

Each chip is the tile's square of the Web-Mercator plane (EPSG:3857), ``size`` × ``size``
pixels (224 by default: ≈ 2.2 m per pixel for a z16 tile in the US), warped with GDAL from
any GeoTIFF/COG in any CRS. Where several rasters cover a tile, each pixel is taken from
the raster whose pixel there is brightest (the largest R+G+B) among those with valid data
there, as the original GeoJEPA merge did: it fills the gaps of partial quarter-quad
images and prefers real data over dark edge artefacts. Pixels no raster covers stay
nodata: alpha = 0 in the PNG.

Pre-cut chips (images named ``z_x_y.png|webp|jpg``, e.g. the GeoJEPA authors' NAIP crops)
are imported as they are.

Outputs: ``images/16_x_y.png`` (RGBA, lossless) and ``images/index.parquet`` (one row per
chip; see docs/FORMATS.md).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gjp import grid
from gjp.errors import GjpError
from gjp.io import atomic_directory, check_format, json_metadata, parquet_schema, provenance
from gjp.parallel import executor
from gjp.sniff import IMAGE_KINDS, sniff
from gjp.ui import QUIET, Reporter

FORMAT = "gjp-images"
FORMAT_VERSION = 1
DEFAULT_SIZE = 224
RESAMPLINGS = ("average", "bilinear", "cubic", "lanczos", "nearest")
INDEX_SCHEMA = pa.schema([
    ("tile", pa.string()),
    ("sources", pa.list_(pa.string())),
    ("valid_fraction", pa.float64()),
    ("acquired", pa.string()),
    ("resolution_m", pa.float64()),
    ("source_resolution_m", pa.float64()),
])
_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{6})(?!\d)")


@dataclass
class Raster:
    path: Path
    lonlat_bounds: tuple[float, float, float, float]
    acquired: str | None
    resolution_m: float


@dataclass
class ChipReport:
    inputs: int = 0
    tiles_covered: int = 0
    chips_written: int = 0
    dropped_low_coverage: int = 0

    def summary(self) -> str:
        return (f"images: {self.chips_written} chips from {self.inputs} inputs ({self.tiles_covered} tiles "
                f"touched, {self.dropped_low_coverage} dropped below --min-coverage)")


# --------------------------------------------------------------------------- inputs

def describe_raster(path: Path) -> Raster:
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise GjpError(f"{path}: the raster has no coordinate reference system")
            if src.dtypes[0] != "uint8":
                raise GjpError(f"{path}: {src.dtypes[0]} pixels; gjp reads 8-bit imagery "
                               "(convert with: gdal_translate -ot Byte -scale …)")
            lonlat = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
            tags = src.tags()
            if src.crs.is_geographic:
                lat = (lonlat[1] + lonlat[3]) / 2
                res = abs(src.transform.a) * 111_320 * math.cos(math.radians(lat))
            else:
                res = abs(src.transform.a) * src.crs.linear_units_factor[1]
    except rasterio.errors.RasterioIOError as err:
        raise GjpError(f"{path}: not a readable raster ({err})") from err
    return Raster(path, tuple(lonlat), _acquisition_date(path, tags), float(res))


def _acquisition_date(path: Path, tags: dict) -> str | None:
    """From the STAC item saved beside the raster by ``gjp fetch naip``, else the TIFF
    date tag, else a YYYYMMDD in the file name (NAIP names carry one)."""
    item = path.with_suffix(".json")
    if item.exists():
        try:
            when = json.loads(item.read_text())["properties"].get("datetime")
            if when:
                return when[:10]
        except (ValueError, KeyError, TypeError):
            pass
    stamp = tags.get("TIFFTAG_DATETIME")
    if stamp:
        try:
            return datetime.strptime(stamp.strip(), "%Y:%m:%d %H:%M:%S").date().isoformat()
        except ValueError:
            pass
    m = _DATE_IN_NAME.search(path.name)
    if m:
        try:
            return date(int(m.group(1)[:4]), int(m.group(1)[4:6]), int(m.group(1)[6:])).isoformat()
        except ValueError:
            pass
    return None


def tiles_of(raster: Raster, zoom: int) -> list[tuple[int, int]]:
    w, s, e, n = raster.lonlat_bounds
    x0, y0 = grid.tile_of(w, n, zoom)
    x1, y1 = grid.tile_of(e, s, zoom)
    return [(x, y) for y in range(int(y0), int(y1) + 1) for x in range(int(x0), int(x1) + 1)]


def mercator_bounds(x: int, y: int, zoom: int) -> tuple[float, float, float, float]:
    """Tile ``(x, y)`` in EPSG:3857 metres: (west, south, east, north)."""
    half = grid.EQUATOR_M / 2
    step = grid.EQUATOR_M / 2**zoom
    return (-half + x * step, half - (y + 1) * step, -half + (x + 1) * step, half - y * step)


# --------------------------------------------------------------------------- chips

def read_chip(path: Path, x: int, y: int, zoom: int, size: int, bands: tuple[int, ...], resampling: str):
    """One raster warped onto tile ``(x, y)``: ``(rgb [3,size,size] uint8, valid [size,size])``."""
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import from_bounds
    from rasterio.vrt import WarpedVRT

    transform = from_bounds(*mercator_bounds(x, y, zoom), size, size)
    with rasterio.open(path) as src:
        if max(bands) > src.count:
            raise GjpError(f"{path}: has {src.count} bands, --bands asks for band {max(bands)}")
        # validity: the raster's own alpha band if it has one, else an alpha the warp adds
        # (0 outside the raster and where the source is nodata)
        own_alpha = [i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha]
        with WarpedVRT(src, crs="EPSG:3857", transform=transform, width=size, height=size,
                       resampling=Resampling[resampling], add_alpha=not own_alpha) as vrt:
            rgb = vrt.read(indexes=list(bands))
            alpha = vrt.read(own_alpha[0] if own_alpha else vrt.count)
    valid = alpha >= 128
    rgb[:, ~valid] = 0
    return rgb, valid


def merge_chips(chips: list[tuple[np.ndarray, np.ndarray]]):
    """Per pixel, the brightest valid source (ties: the earlier source). Returns the merged
    ``rgb``, the valid mask, and the number of pixels each source gave."""
    size = chips[0][1].shape
    rgb = np.zeros((3, *size), dtype=np.uint8)
    best = np.full(size, -1, dtype=np.int32)
    owner = np.full(size, -1, dtype=np.int32)
    for i, (src_rgb, valid) in enumerate(chips):
        intensity = src_rgb.astype(np.int32).sum(axis=0)
        take = valid & (intensity > best)
        rgb[:, take] = src_rgb[:, take]
        best[take] = intensity[take]
        owner[take] = i
    counts = np.bincount(owner[owner >= 0], minlength=len(chips))
    return rgb, owner >= 0, counts


def write_png(path: Path, rgb: np.ndarray, valid: np.ndarray) -> None:
    from PIL import Image

    rgba = np.dstack([rgb.transpose(1, 2, 0), np.where(valid, 255, 0).astype(np.uint8)])
    # zlib level 1: ~3× faster than Pillow's default for ~20 % more bytes; the chips are an
    # intermediate (pack-h5 stores them compressed again)
    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG", compress_level=1)


def _chip_job(job):
    import rasterio

    (x, y), rasters, zoom, size, bands, resampling, min_coverage, out_dir = job
    chips = []
    for r in rasters:
        try:
            chips.append(read_chip(r.path, x, y, zoom, size, bands, resampling))
        except rasterio.errors.RasterioError as err:
            # GDAL's own words ("Read failed. See previous exception") name neither the
            # file nor the cause: the cause is a damaged or truncated raster
            raise GjpError(f"{r.path}: cannot read its pixels (a damaged or truncated raster? "
                           f"{_gdal_reason(err)})") from None
    rgb, valid, counts = merge_chips(chips)
    fraction = float(valid.mean())
    if fraction == 0 or fraction < min_coverage:
        return None, fraction > 0
    name = grid.tile_name(zoom, x, y)
    write_png(out_dir / f"{name}.png", rgb, valid)
    order = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    main = rasters[order[0]]
    return {"tile": name, "sources": [rasters[i].path.name for i in order], "valid_fraction": fraction,
            "acquired": main.acquired, "resolution_m": float(grid.tile_width_m(y, zoom)) / size,
            "source_resolution_m": main.resolution_m}, True


def _gdal_reason(err: BaseException) -> str:
    """The most specific message in a chain of GDAL errors."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def tile_rasters(inputs: list[Path], output_dir: str | Path = "images", *, zoom: int = grid.DEFAULT_ZOOM,
                 size: int = DEFAULT_SIZE, bands: tuple[int, ...] = (1, 2, 3), min_coverage: float = 0.0,
                 resampling: str = "average", workers: int = 1, scheduler: str | None = None,
                 overwrite: bool = False, reporter: Reporter = QUIET) -> ChipReport:
    """Cut rasters into chips (see the module doc): one job per tile, on ``workers``
    threads or on the Dask cluster at ``scheduler``."""
    if len(bands) != 3 or min(bands) < 1:
        raise GjpError(f"--bands must name 3 bands (1-based), got {','.join(map(str, bands))}")
    if resampling not in RESAMPLINGS:
        raise GjpError(f"--resampling {resampling!r}: choose one of {', '.join(RESAMPLINGS)}")
    if not 0 <= min_coverage <= 1:
        raise GjpError(f"--min-coverage must be between 0 and 1, got {min_coverage}")
    rasters = sorted((describe_raster(Path(p)) for p in inputs), key=lambda r: str(r.path))
    by_tile: dict[tuple[int, int], list[Raster]] = {}
    for raster in rasters:
        for xy in tiles_of(raster, zoom):
            by_tile.setdefault(xy, []).append(raster)
    report = ChipReport(inputs=len(rasters))
    params = {"zoom": zoom, "size": size, "bands": list(bands), "min_coverage": min_coverage,
              "resampling": resampling, "inputs": [str(r.path) for r in rasters]}
    with executor(workers, scheduler) as pool, atomic_directory(output_dir, overwrite) as staging:
        seen = {r.path: replace(r, path=pool.path(r.path)) for r in rasters}
        jobs = [(xy, [seen[r.path] for r in by_tile[xy]], zoom, size, bands, resampling, min_coverage,
                 pool.path(staging)) for xy in sorted(by_tile, key=lambda t: (t[1], t[0]))]
        bar = reporter.progress(total=len(jobs), desc="chips", unit=" tile")
        rows = []
        for row, touched in pool.map(_chip_job, jobs, bar):
            report.tiles_covered += touched
            if row is not None:
                rows.append(row)
            elif touched:
                report.dropped_low_coverage += 1
        bar.close()
        report.chips_written = len(rows)
        if not rows:
            raise GjpError(f"{', '.join(str(r.path) for r in rasters)}: no tile has valid pixels "
                           f"(≥ --min-coverage {min_coverage})")
        write_index(staging, rows, {"zoom": zoom, "size": size}, provenance("tile", params))
    return report


def read_index_metadata(images_dir: Path) -> dict:
    """The ``gjp`` metadata of ``images_dir/index.parquet`` (zoom, size, steps), checked:
    the file exists, is Parquet, and is a gjp image index of the version this gjp reads."""
    index = Path(images_dir) / "index.parquet"
    if not index.exists():
        raise GjpError(f"{images_dir}: no index.parquet (make it with `gjp tile RASTER… -o {images_dir}`)")
    meta = json_metadata((parquet_schema(index, "image index").metadata or {}).get(b"gjp"), index, "image index")
    check_format(meta.get("format"), meta.get("format_version"), index, FORMAT, FORMAT_VERSION, "image index",
                 "gjp tile RASTER… -o images/")
    for key in ("zoom", "size"):
        if not isinstance(meta.get(key), int):
            raise GjpError(f"{index}: damaged image index metadata (no {key})")
    return meta


def write_index(out_dir: Path, rows: list[dict], grid_params: dict, step: dict) -> None:
    rows = sorted(rows, key=lambda r: r["tile"])
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **grid_params, "steps": [step]}
    table = table.replace_schema_metadata({b"gjp": json.dumps(meta, sort_keys=True).encode()})
    pq.write_table(table, out_dir / "index.parquet", compression="snappy")


# --------------------------------------------------------------------------- pre-cut chips

def import_chips(inputs: list[Path], output_dir: str | Path = "images", *, size: int = DEFAULT_SIZE,
                 overwrite: bool = False, reporter: Reporter = QUIET) -> ChipReport:
    """Import chips already cut per tile (files named ``z_x_y.png|webp|jpg``)."""
    from PIL import Image, UnidentifiedImageError

    parsed = []
    for path in inputs:
        try:
            parsed.append((grid.parse_tile_name(path.stem), path))
        except ValueError:
            raise GjpError(f"{path}: an image chip must be named after its tile, like 16_18052_25957.png") from None
    zooms = {z for (z, _, _), _ in parsed}
    if len(zooms) != 1:
        raise GjpError(f"image chips of several zooms ({', '.join(map(str, sorted(zooms)))}); import one zoom at a time")
    zoom = zooms.pop()
    report = ChipReport(inputs=len(parsed))
    rows = []
    with atomic_directory(output_dir, overwrite) as staging:
        for (z, x, y), path in reporter.progress(sorted(parsed), desc="chips", unit=" chip"):
            try:
                with Image.open(path) as im:
                    im.load()
                    rgba = np.asarray(im.convert("RGBA"))
            except (UnidentifiedImageError, OSError) as err:
                raise GjpError(f"{path}: not a readable image ({err})") from err
            if rgba.shape[:2] != (size, size):
                raise GjpError(f"{path}: {rgba.shape[1]}×{rgba.shape[0]} pixels, expected {size}×{size} (--size)")
            valid = rgba[:, :, 3] > 0
            rgb = rgba[:, :, :3].transpose(2, 0, 1).copy()
            rgb[:, ~valid] = 0
            name = grid.tile_name(z, x, y)
            write_png(staging / f"{name}.png", rgb, valid)
            rows.append({"tile": name, "sources": [path.name], "valid_fraction": float(valid.mean()),
                         "acquired": None, "resolution_m": float(grid.tile_width_m(y, z)) / size,
                         "source_resolution_m": None})
        report.tiles_covered = report.chips_written = len(rows)
        write_index(staging, rows, {"zoom": zoom, "size": size},
                    provenance("tile", {"size": size, "inputs": [str(p) for _, p in sorted(parsed)]}))
    return report


def classify_inputs(inputs: list[Path]) -> tuple[str, list[Path]]:
    """``("osm" | "raster" | "chips", files)``: directories expand to the rasters or image
    chips inside; a mix of kinds is refused."""
    files: list[tuple[str, Path]] = []
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and
                            p.suffix.lower() in (".tif", ".tiff", ".png", ".webp", ".jpg", ".jpeg"))
            if not inside:
                raise GjpError(f"{path}: no GeoTIFF (.tif) or image chip files in this directory")
            files += [(_kind(p), p) for p in inside]
        else:
            files.append((_kind(path), path))
    kinds = {k for k, _ in files}
    if len(kinds) > 1:
        raise GjpError("the inputs mix " + " and ".join(sorted(kinds)) +
                       " files; run gjp tile once for each kind")
    return kinds.pop(), [p for _, p in files]


def _kind(path: Path) -> str:
    kind = sniff(path)
    if kind is None:
        raise GjpError(f"{path}: neither an OSM file (.osm.pbf, .osm, .osm.bz2) nor a GeoTIFF raster")
    if kind == "tiff":
        return "raster"
    if kind in IMAGE_KINDS:
        return "chips"
    return "osm"

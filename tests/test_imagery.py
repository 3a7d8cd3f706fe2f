"""Raster chips by known answers, real NAIP data, and the `gjp tile` dispatch."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.warp import transform_geom
from rasters import tile_aligned, utm_naip

from gjp import grid
from gjp.errors import GjpError
from gjp.imagery.chips import classify_inputs, import_chips, mercator_bounds, tile_rasters

ND_TIF = Path(__file__).parents[1] / "examples" / "data" / "naip_nd_m_4709963_se_14_1_20200831_5m.tif"
NAIP_CHIPS = Path(__file__).parent / "data" / "naip_z16"
X, Y, Z = 14712, 23340, 16  # North Dakota prairie (47.02°N, -99.18°)


def chip(out, x=X, y=Y, z=Z):
    rgba = np.asarray(Image.open(out / f"{grid.tile_name(z, x, y)}.png"))
    return rgba[:, :, :3], rgba[:, :, 3]


def coordinates(r, c):
    return np.stack([(c * 7) % 256, (r * 5) % 256, ((r + c) % 200) + 20]).astype(np.uint8)


def test_pixels_land_where_they_should(tmp_path):
    # a raster whose pixels encode their own row and column, aligned with 2×1 tiles
    src = tile_aligned(tmp_path / "grid.tif", X, Y, Z, 224, coordinates, tiles=(2, 1))
    out = tmp_path / "images"
    report = tile_rasters([src], out, resampling="nearest")
    assert report.chips_written == 2
    r, c = np.mgrid[0:224, 0:224]
    for dx in (0, 1):
        rgb, alpha = chip(out, X + dx)
        np.testing.assert_array_equal(rgb, coordinates(r, c + 224 * dx).transpose(1, 2, 0))
        assert (alpha == 255).all()
    # the default resampling (average) is exact on an aligned grid too
    report = tile_rasters([src], tmp_path / "avg")
    np.testing.assert_array_equal(chip(tmp_path / "avg")[0], coordinates(r, c).transpose(1, 2, 0))


def test_overlapping_rasters_merge_by_highest_intensity(tmp_path):
    flat = tile_aligned(tmp_path / "a.tif", X, Y, Z, 224, lambda r, c: np.full((3, *r.shape), 100, np.uint8))
    split = tile_aligned(tmp_path / "b.tif", X, Y, Z, 224,
                         lambda r, c: np.where(c < 112, 150, 50)[None].repeat(3, 0).astype(np.uint8))
    out = tmp_path / "images"
    tile_rasters([split, flat], out)
    rgb, alpha = chip(out)
    assert (rgb[:, :112] == 150).all() and (rgb[:, 112:] == 100).all() and (alpha == 255).all()
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert index[0]["sources"] == ["a.tif", "b.tif"]  # a gave more pixels (the right half + ties)


def test_nodata_stays_nodata(tmp_path):
    def half_and_hole(r, c):
        data = np.full((3, *r.shape), 120, np.uint8)
        data[:, :, 112:] = 0  # the east half is nodata
        data[:, 50:60, 20:30] = 0  # and a hole inside
        return data

    src = tile_aligned(tmp_path / "half.tif", X, Y, Z, 224, half_and_hole)
    out = tmp_path / "images"
    tile_rasters([src], out)
    rgb, alpha = chip(out)
    assert (alpha[:, 112:] == 0).all() and (rgb[:, 112:] == 0).all()
    assert (alpha[50:60, 20:30] == 0).all()
    assert (alpha[:, :112].sum() / 255) == 224 * 112 - 100
    (row,) = pq.read_table(out / "index.parquet").to_pylist()
    assert row["valid_fraction"] == pytest.approx((224 * 112 - 100) / 224**2)
    # --min-coverage drops mostly empty chips
    with pytest.raises(GjpError, match="no tile has valid pixels"):
        tile_rasters([src], tmp_path / "strict", min_coverage=0.6)


def test_a_raster_in_another_crs_lands_in_the_same_place(tmp_path):
    west, south, east, north = grid.tile_bounds(X, Y, Z)
    lon, lat = west + 0.3 * (east - west), north - 0.6 * (north - south)  # a point in the tile
    src = utm_naip(tmp_path / "utm.tif", (west + east) / 2, (south + north) / 2, 900, 900, res=1.0,
                   square=(lon, lat, 40, 250))
    out = tmp_path / "images"
    tile_rasters([src], out)
    rgb, alpha = chip(out)
    bright = np.argwhere(rgb[:, :, 0] > 200)
    row, col = bright.mean(axis=0)
    expected_col = (lon - west) / (east - west) * 224
    fx, fy = grid.lonlat_to_fractional(lon, lat, Z)
    expected_row = (float(fy) - Y) * 224
    assert abs(col - expected_col) < 1.0 and abs(row - expected_row) < 1.0
    side_px = 40 / (float(grid.tile_width_m(Y, Z)) / 224)
    assert len(bright) == pytest.approx(side_px**2, rel=0.15)


def test_real_north_dakota_naip_tiles_into_the_expected_tiles(tmp_path):
    out = tmp_path / "images"
    report = tile_rasters([ND_TIF], out, workers=2)
    names = {p.stem for p in out.glob("16_*.png")}
    assert len(names) == report.chips_written
    # independently: the raster's footprint in Web Mercator against each tile's square
    with rasterio.open(ND_TIF) as src:
        outline = shapely.segmentize(shapely.box(*src.bounds), 10.0)  # follow the curved edges
        footprint = shapely.geometry.shape(transform_geom(src.crs, "EPSG:3857", shapely.geometry.mapping(outline)))
    clearly_in, touching = set(), set()
    for name in names | {grid.tile_name(Z, x, y) for x in range(14700, 14730) for y in range(23330, 23350)}:
        _, x, y = grid.parse_tile_name(name)
        overlap = footprint.intersection(shapely.box(*mercator_bounds(x, y, Z))).area
        tile_area = shapely.box(*mercator_bounds(x, y, Z)).area
        if overlap > 0.01 * tile_area:
            clearly_in.add(name)
        if overlap > 0:
            touching.add(name)
    assert clearly_in <= names <= touching
    assert 100 <= len(names) <= 140
    rows = pq.read_table(out / "index.parquet").to_pylist()
    assert {r["tile"] for r in rows} == names
    assert all(r["acquired"] == "2020-08-31" for r in rows)  # from the NAIP file name
    assert all(r["source_resolution_m"] == pytest.approx(5.0) for r in rows)
    assert all(r["resolution_m"] == pytest.approx(611.5 * math.cos(math.radians(47.02)) / 224, rel=0.01)
               for r in rows)
    inner = [r for r in rows if r["valid_fraction"] == 1.0]
    assert len(inner) > 40  # whole tiles inside the image are fully valid
    rgb, alpha = chip(out, *grid.parse_tile_name(inner[0]["tile"])[1:])
    assert rgb.std() > 5  # real texture, not a constant


def test_real_naip_chips_are_imported(tmp_path):
    out = tmp_path / "images"
    report = import_chips(sorted(NAIP_CHIPS.glob("*.webp")), out)
    assert report.chips_written == len(list(NAIP_CHIPS.glob("*.webp"))) >= 16
    rows = pq.read_table(out / "index.parquet").to_pylist()
    assert all(r["valid_fraction"] == 1.0 for r in rows)
    first = rows[0]["tile"]
    original = np.asarray(Image.open(NAIP_CHIPS / f"{first}.webp").convert("RGB"))
    np.testing.assert_array_equal(chip(out, *grid.parse_tile_name(first)[1:])[0], original)
    meta = json.loads(pq.read_schema(out / "index.parquet").metadata[b"gjp"])
    assert meta["format"] == "gjp-images" and meta["zoom"] == 16 and meta["size"] == 224


def test_chips_are_deterministic_across_workers(tmp_path):
    a = tile_rasters([ND_TIF], tmp_path / "a", workers=1)
    b = tile_rasters([ND_TIF], tmp_path / "b", workers=2)
    assert a.chips_written == b.chips_written
    for p in (tmp_path / "a").iterdir():
        if p.suffix == ".png":
            assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    ta, tb = pq.read_table(tmp_path / "a" / "index.parquet"), pq.read_table(tmp_path / "b" / "index.parquet")
    assert ta.equals(tb)


def test_inputs_are_told_apart_by_content(tmp_path, boston):
    tif = shutil.copy(ND_TIF, tmp_path / "image.tif")
    disguised = shutil.copy(ND_TIF, tmp_path / "really_a_raster.osm.pbf")
    assert classify_inputs([Path(tif)]) == ("raster", [Path(tif)])
    assert classify_inputs([Path(disguised)])[0] == "raster"
    assert classify_inputs([boston])[0] == "osm"
    with pytest.raises(GjpError, match="mix"):
        classify_inputs([boston, Path(tif)])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(GjpError, match="neither an OSM file"):
        classify_inputs([tmp_path / "notes.txt"])


def test_a_raster_with_its_own_alpha_band(tmp_path):
    from rasterio.enums import ColorInterp

    src = tile_aligned(tmp_path / "rgba.tif", X, Y, Z, 224,
                       lambda r, c: np.stack([np.full(r.shape, 200), np.full(r.shape, 100), np.full(r.shape, 50),
                                              np.where(r < 100, 255, 0)]).astype(np.uint8))
    with rasterio.open(src, "r+") as ds:
        ds.nodata = None
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    tile_rasters([src], tmp_path / "images")
    rgb, alpha = chip(tmp_path / "images")
    assert (alpha[:100] == 255).all() and (alpha[100:] == 0).all()
    assert (rgb[:100] == [200, 100, 50]).all() and (rgb[100:] == 0).all()


def test_tile_cli_on_rasters(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "gjp", "-q", "tile", str(ND_TIF), "--min-coverage", "0.99"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "images"  # the default output for rasters
    rows = pq.read_table(tmp_path / "images" / "index.parquet").to_pylist()
    assert rows and all(r["valid_fraction"] >= 0.99 for r in rows)
    mixed = subprocess.run([sys.executable, "-m", "gjp", "tile", str(ND_TIF),
                            str(Path(__file__).parent / "data" / "us_ma_boston_2020-08.osm.pbf"), "-o", "x"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert mixed.returncode != 0 and mixed.stderr.startswith("gjp: error: the inputs mix")

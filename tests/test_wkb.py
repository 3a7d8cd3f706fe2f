"""The WKB walker against shapely: coordinates, parts, types, rewriting, bad input."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from gjp.errors import GjpError
from gjp.geometry import wkb
from gjp.geoparquet import geometry_type_names

WKT = [
    "POINT (1 2)",
    "LINESTRING (0 0, 1 1, 2 0)",
    "POLYGON ((0 0, 1 0, 1 1, 0 0), (0.1 0.1, 0.2 0.1, 0.2 0.2, 0.1 0.1))",
    "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5)))",
    "GEOMETRYCOLLECTION (POINT (3 3), MULTILINESTRING ((0 0, 1 1), (2 2, 3 3)), "
    "GEOMETRYCOLLECTION EMPTY, POLYGON EMPTY, GEOMETRYCOLLECTION (LINESTRING (9 9, 8 8)))",
    "POINT EMPTY",
    "MULTIPOINT ((1 1), (2 2))",
    "GEOMETRYCOLLECTION EMPTY",
    "LINESTRING Z (0 0 1, 1 1 2)",
]


def shapely_parts(geoms):
    """(kind, row, coordinates) of every part, the way visibility used to take geometries
    apart with shapely: get_parts until no collection is left, polygons into rings."""
    out = []
    for row, g in enumerate(geoms):
        stack = [g]
        while stack:
            h = stack.pop(0)
            t = shapely.get_type_id(h)
            if t >= 4:
                stack = list(shapely.get_parts(h)) + stack
            elif t == 3:
                out += [(wkb.RING, row, shapely.get_coordinates(r)) for r in shapely.get_rings(h)]
            else:
                out.append((wkb.POINT if t == 0 else wkb.LINE, row, shapely.get_coordinates(h)))
    return out


@pytest.mark.parametrize("options", [{}, {"byte_order": 0}, {"include_srid": True}, {"flavor": "iso"}],
                         ids=["little-endian", "big-endian", "ewkb-srid", "iso"])
def test_walk_finds_the_parts_shapely_finds(options):
    geoms = shapely.from_wkt(WKT)
    if options.get("include_srid"):
        geoms = shapely.set_srid(geoms, 4326)
    walked = wkb.walk(pa.array(shapely.to_wkb(geoms, **options), pa.binary()))
    expected = shapely_parts(geoms)
    assert walked.rows == len(geoms)
    assert walked.row_type.tolist() == [1, 2, 3, 6, 7, 1, 4, 7, 2]
    assert walked.part_kind.tolist() == [k for k, _, _ in expected]
    assert walked.part_row.tolist() == [r for _, r, _ in expected]
    for p, (_, _, coords) in enumerate(expected):
        assert np.array_equal(walked.coords[walked.part_offsets[p]:walked.part_offsets[p + 1]], coords[:, :2])
    assert np.array_equal(walked.coords, shapely.get_coordinates(geoms))
    assert np.array_equal(walked.row_of_coord(), shapely.get_coordinates(geoms, return_index=True)[1])


def test_rewritten_coordinates_are_what_shapely_writes():
    geoms = shapely.from_wkt(WKT[:-1])  # 2D: shapely.transform would drop a Z
    column = pa.array(shapely.to_wkb(geoms), pa.binary())
    walked = wkb.walk(column)
    moved = wkb.with_coords(column, walked, walked.coords * 2 + 1)
    assert moved.to_pylist() == shapely.to_wkb(shapely.transform(geoms, lambda c: c * 2 + 1)).tolist()
    big = pa.array(shapely.to_wkb(geoms, byte_order=0), pa.binary())
    back = shapely.from_wkb(wkb.with_coords(big, wkb.walk(big), walked.coords + 5).to_numpy(zero_copy_only=False))
    assert shapely.equals_exact(back, shapely.transform(geoms, lambda c: c + 5), 0).all()


def test_slices_chunks_and_shapely_input(tmp_path):
    geoms = shapely.from_wkt(WKT)
    column = pa.array(shapely.to_wkb(geoms), pa.binary())
    sliced = wkb.walk(column.slice(2, 3))
    assert np.array_equal(sliced.coords, shapely.get_coordinates(geoms[2:5]))
    chunked = pa.chunked_array([column.slice(0, 4), column.slice(4)])
    assert np.array_equal(wkb.walk(chunked).coords, shapely.get_coordinates(geoms))
    assert np.array_equal(wkb.walk(geoms).coords, shapely.get_coordinates(geoms))
    pq.write_table(pa.table({"g": pa.array(shapely.to_wkb(geoms), pa.large_binary())}), tmp_path / "t.parquet")
    large = pq.read_table(tmp_path / "t.parquet").column("g")
    assert np.array_equal(wkb.walk(large).coords, shapely.get_coordinates(geoms))
    assert geometry_type_names(column) == ["Point", "LineString", "Polygon", "MultiPoint",
                                           "MultiPolygon", "GeometryCollection"]
    assert geometry_type_names(large) == geometry_type_names(chunked) == geometry_type_names(column)
    big_endian = shapely.to_wkb(geoms, byte_order=0, include_srid=False)
    assert geometry_type_names(pa.array(big_endian, pa.binary())) == geometry_type_names(column)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x07\x01\x00\x00\x00", b"\x01\x09\x00\x00\x00",
                                  b"\x01\x02\x00\x00\x00\x05\x00\x00\x00\x00"],
                         ids=["empty", "short", "bad-order", "bad-type", "truncated"])
def test_malformed_wkb_is_a_clear_error(data):
    with pytest.raises(GjpError, match="not valid WKB"):
        wkb.walk(pa.array([data], pa.binary()))
    if len(data) < 6:  # headers alone: what the GeoParquet description reads
        with pytest.raises(GjpError, match="not valid WKB"):
            geometry_type_names(pa.array([data], pa.binary()))


def test_nulls_and_other_types_are_refused():
    with pytest.raises(GjpError, match="nulls"):
        wkb.walk(pa.array([None], pa.binary()))
    with pytest.raises(GjpError, match="not WKB binary"):
        wkb.walk(pa.array(["POINT (1 2)"]))

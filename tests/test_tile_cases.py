"""`gjp tile` on hand-made OSM cases (inline OPL), each checking one rule of DESIGN §1."""

import pyarrow.parquet as pq
import pytest
import shapely

from gjp import grid
from gjp.osm.tiling import tile_osm

# Tile T = 16_18048_25957 (Charlotte, NC). x = 18048 is a multiple of 64, so its west
# border, -80.859375°, is exact in OSM's 1e-7° fixed point.
TX, TY = 18048, 25957
T = grid.tile_name(16, TX, TY)
WEST, SOUTH, EAST, NORTH = grid.tile_bounds(TX, TY, 16)
MID_LAT = 35.005


def run(path, tmp_path, **kw):
    out = tmp_path / "tiles"
    report = tile_osm([path], out, min_entities=1, **kw)
    return report, _read_all(out)


def _read_all(out):
    rows = []
    for f in sorted(out.glob("*.parquet")):
        t = pq.read_table(f)
        for r in t.to_pylist():
            r["geom"] = shapely.from_wkb(r["geometry"])
            r["tags"] = dict(r["tags"])
            rows.append(r)
    return rows


def rows_of(rows, osm_type, osm_id):
    return {r["tile"]: r for r in rows if r["osm_type"] == osm_type and r["osm_id"] == osm_id}


def n(node_id, lon, lat, tags=""):
    return f"n{node_id} v1 x{lon:.7f} y{lat:.7f}" + (f" T{tags}" if tags else "")


def test_way_crossing_a_tile_corner_is_assigned_to_that_tile(opl, tmp_path):
    # From the tile west of T to the tile north of T, cutting T's NW corner, no vertex in T.
    path = opl("\n".join([
        n(1, WEST - 0.0005, NORTH - 0.001), n(2, WEST + 0.001, NORTH + 0.0005),
        "w10 v1 Thighway=residential Nn1,n2",
    ]))
    _, rows = run(path, tmp_path)
    tiles = rows_of(rows, "way", 10)
    assert set(tiles) == {grid.tile_name(16, TX - 1, TY), T, grid.tile_name(16, TX, TY - 1)}
    piece = tiles[T]["geom"]
    assert piece.geom_type == "LineString" and piece.length > 0.0001
    w, s, e, nn = piece.bounds
    assert w >= WEST - 1e-9 and nn <= NORTH + 1e-9


def test_multipolygon_with_a_hole_cut_by_the_border(opl, tmp_path):
    lo, hi = MID_LAT - 0.001, MID_LAT + 0.001
    path = opl("\n".join([
        # outer square straddling T's east border
        n(1, EAST - 0.002, lo), n(2, EAST + 0.002, lo), n(3, EAST + 0.002, hi), n(4, EAST - 0.002, hi),
        # hole 1 straddles the border too; hole 2 lies inside T
        n(5, EAST - 0.001, lo + 0.0005), n(6, EAST + 0.001, lo + 0.0005),
        n(7, EAST + 0.001, hi - 0.0005), n(8, EAST - 0.001, hi - 0.0005),
        n(9, EAST - 0.0018, lo + 0.0002), n(10, EAST - 0.0015, lo + 0.0002),
        n(11, EAST - 0.0015, lo + 0.0004), n(12, EAST - 0.0018, lo + 0.0004),
        "w20 v1 Nn1,n2,n3,n4,n1", "w21 v1 Nn5,n6,n7,n8,n5", "w22 v1 Nn9,n10,n11,n12,n9",
        "r100 v1 Ttype=multipolygon,landuse=grass Mw20@outer,w21@inner,w22@inner",
    ]))
    _, rows = run(path, tmp_path)
    tiles = rows_of(rows, "relation", 100)  # the real OSM id, not pyosmium's area id 201
    assert set(tiles) == {T, grid.tile_name(16, TX + 1, TY)}
    row = tiles[T]
    assert row["kind"] == "multipolygon" and row["tags"] == {"landuse": "grass"}
    piece = row["geom"]
    assert piece.is_valid and piece.geom_type == "Polygon"
    assert len(piece.interiors) == 1  # hole 2 kept; hole 1 became a notch in the border
    expected = 0.002 * 0.002 - 0.001 * 0.001 - 0.0003 * 0.0002  # up to OSM's 1e-7° rounding
    assert piece.area == pytest.approx(expected, rel=1e-4)
    whole = 0.004 * 0.002 - 0.002 * 0.001 - 0.0003 * 0.0002
    assert piece.area + tiles[grid.tile_name(16, TX + 1, TY)]["geom"].area == pytest.approx(whole, rel=1e-9)
    assert not any(r["osm_type"] == "way" for r in rows)  # untagged member ways are not entities


def test_route_relation_is_the_collection_of_its_members(opl, tmp_path):
    path = opl("\n".join([
        n(1, WEST + 0.001, MID_LAT), n(2, WEST + 0.002, MID_LAT), n(3, WEST + 0.003, MID_LAT + 0.001),
        n(4, WEST + 0.002, MID_LAT - 0.001),
        "w30 v1 Nn1,n2", "w31 v1 Nn2,n3",
        "r200 v1 Ttype=route,route=bus,ref=5,source=gtfs Mw30@,w31@,n4@stop,w999@",
    ]))
    report, rows = run(path, tmp_path)
    row = rows_of(rows, "relation", 200)[T]
    assert row["kind"] == "relation"
    assert row["tags"] == {"type": "route", "route": "bus", "ref": "5"}  # source* dropped
    parts = list(row["geom"].geoms)
    assert [p.geom_type for p in parts] == ["LineString", "LineString", "Point"]  # kept apart, in order
    assert parts[2].x == pytest.approx(WEST + 0.002) and parts[2].y == pytest.approx(MID_LAT - 0.001)
    assert report.read.relations_repaired == 1  # w999 is not in the file


def test_untagged_and_noise_only_ways_are_not_entities(opl, tmp_path):
    path = opl("\n".join([
        n(1, WEST + 0.001, MID_LAT), n(2, WEST + 0.002, MID_LAT), n(3, WEST + 0.003, MID_LAT),
        "w40 v1 Nn1,n2", "w41 v1 Tsource=bing,created_by=JOSM Nn2,n3", "w42 v1 Thighway=path Nn1,n3",
    ]))
    _, rows = run(path, tmp_path)
    assert [(r["osm_type"], r["osm_id"]) for r in rows] == [("way", 42)]


def test_node_on_a_tile_edge_goes_to_exactly_one_tile(opl, tmp_path):
    path = opl(n(1, WEST, MID_LAT, "amenity=bench"))
    _, rows = run(path, tmp_path)
    assert [r["tile"] for r in rows] == [T]  # half-open tiles: the west border belongs to T
    assert rows[0]["kind"] == "point" and rows[0]["geom"].x == WEST


def test_self_intersecting_ring_is_repaired_not_dropped(opl, tmp_path):
    a, b = WEST + 0.001, WEST + 0.002
    c, d = MID_LAT, MID_LAT + 0.001
    path = opl("\n".join([n(1, a, c), n(2, b, d), n(3, b, c), n(4, a, d),
                          "w50 v1 Tbuilding=yes Nn1,n2,n3,n4,n1"]))  # a bow tie
    report, rows = run(path, tmp_path)
    row = rows_of(rows, "way", 50)[T]
    assert row["kind"] == "polygon" and row["geom"].is_valid
    assert row["geom"].geom_type == "MultiPolygon" and len(row["geom"].geoms) == 2
    assert row["geom"].area == pytest.approx(0.5 * 0.001 * 0.001, rel=1e-4)
    assert report.read.polygons_made_valid == 1


def test_ways_with_missing_nodes_are_repaired_or_skipped_and_counted(opl, tmp_path):
    path = opl("\n".join([
        n(1, WEST + 0.001, MID_LAT), n(2, WEST + 0.002, MID_LAT), n(3, WEST + 0.003, MID_LAT),
        n(4, WEST + 0.004, MID_LAT), n(5, WEST + 0.001, MID_LAT + 0.001),
        "w60 v1 Thighway=service Nn1,n2,n999,n3,n4",
        "w61 v1 Tbuilding=yes Nn1,n2,n998,n5,n1",
        "w62 v1 Thighway=path Nn997,n4",
    ]))
    report, rows = run(path, tmp_path)
    row = rows_of(rows, "way", 60)[T]
    assert row["geom"].geom_type == "MultiLineString"  # the two known runs, not joined across the gap
    assert [len(g.coords) for g in row["geom"].geoms] == [2, 2]
    assert not rows_of(rows, "way", 61) and not rows_of(rows, "way", 62)
    assert report.read.ways_repaired == 1 and report.read.ways_skipped == 2


def test_closed_ways_follow_the_area_convention(opl, tmp_path):
    a, b = WEST + 0.001, WEST + 0.002
    c, d = MID_LAT, MID_LAT + 0.001
    nodes = [n(1, a, c), n(2, b, c), n(3, b, d), n(4, a, d)]
    ways = ["w70 v1 Tleisure=park Nn1,n2,n3,n4,n1", "w71 v1 Thighway=residential Nn1,n2,n3,n4,n1",
            "w72 v1 Thighway=pedestrian,area=yes Nn1,n2,n3,n4,n1", "w73 v1 Tbarrier=fence Nn1,n2,n3,n4,n1",
            "w74 v1 Tnatural=coastline Nn1,n2,n3,n4,n1", "w75 v1 Tbuilding=yes,area=no Nn1,n2,n3,n4,n1"]
    _, rows = run(opl("\n".join(nodes + ways)), tmp_path)
    kinds = {r["osm_id"]: (r["kind"], r["geom"].geom_type) for r in rows}
    assert kinds == {70: ("polygon", "Polygon"), 71: ("line", "LineString"), 72: ("polygon", "Polygon"),
                     73: ("line", "LineString"), 74: ("line", "LineString"), 75: ("line", "LineString")}


def test_entity_count_limits(opl, tmp_path):
    nodes = [n(i, WEST + 0.0001 * i, MID_LAT, "amenity=bench") for i in range(1, 8)]
    nodes.append(n(100, EAST + 0.001, MID_LAT, "amenity=bench"))  # a lone bench in the next tile
    path = opl("\n".join(nodes))
    out = tmp_path / "t5"
    report = tile_osm([path], out, min_entities=5)
    assert report.tiles_kept == 1 and report.tiles_too_few == 1
    out = tmp_path / "t6"
    report = tile_osm([path], out, min_entities=1, max_entities=6)
    assert report.tiles_kept == 1 and report.tiles_too_many == 1


def test_chunks_and_spill_buckets_do_not_change_the_output(monaco, tmp_path, monkeypatch):
    from gjp.osm import tiling

    tile_osm([monaco], tmp_path / "one", min_entities=1)
    monkeypatch.setattr(tiling, "_CHUNK_SIZE", 997)  # many chunks
    monkeypatch.setattr(tiling, "_SPILL_BYTES_PER_BUCKET", 50_000)  # ~10 buckets
    tile_osm([monaco], tmp_path / "many", min_entities=1, workers=2)
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    many = {p.name: p.read_bytes() for p in (tmp_path / "many").iterdir()}
    assert one.keys() == many.keys() and len(one) > 2
    for name in one:
        a, b = pq.read_table(tmp_path / "one" / name), pq.read_table(tmp_path / "many" / name)
        assert a.equals(b), name


def test_tiny_memory_settings_give_byte_identical_outputs(monaco, tmp_path, monkeypatch):
    """Memory is bounded by settings (entities per chunk, rows waiting for a spill, rows a
    bucket may hold before it is split by group): at tiny values, the same bytes."""
    from gjp.osm import tiling

    # the same output path for both runs: the provenance records the command line
    report = tile_osm([monaco], tmp_path / "out", min_entities=1)
    default = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    monkeypatch.setattr(tiling, "_CHUNK_SIZE", 50)  # relation chunks: at most 50 members too
    monkeypatch.setattr(tiling, "_SPILL_BUFFER_ROWS", 300)
    monkeypatch.setattr(tiling, "_BUCKET_ROWS", 500)  # every bucket split, some groups alone
    tiny = tile_osm([monaco], tmp_path / "out", min_entities=1, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == default
    assert tiny == report


def test_other_zooms_group_two_levels_up(opl, tmp_path):
    path = opl(n(1, WEST + 0.001, MID_LAT, "amenity=bench"))
    out = tmp_path / "z15"
    tile_osm([path], out, zoom=15, min_entities=1)
    (f,) = out.iterdir()
    x15, y15 = TX // 2, TY // 2
    assert f.name == f"13_{x15 // 4}_{y15 // 4}.parquet"
    assert pq.read_table(f).column("tile").to_pylist() == [f"15_{x15}_{y15}"]


def test_plain_osm_xml_and_file_backed_node_index(west_oakland, tmp_path):
    import bz2

    xml = tmp_path / "oakland.osm"
    xml.write_bytes(bz2.decompress(west_oakland.read_bytes()))
    a = tile_osm([xml], tmp_path / "a", min_entities=1)
    b = tile_osm([west_oakland], tmp_path / "b", min_entities=1,
                 node_index=f"sparse_file_array,{tmp_path / 'nodes.idx'}")
    assert a.rows_written == b.rows_written > 0
    for f in (tmp_path / "a").iterdir():
        assert pq.read_table(f).equals(pq.read_table(tmp_path / "b" / f.name))


def test_inputs_read_at_once_give_the_bytes_of_reading_them_in_turn(monaco, boston, tmp_path, monkeypatch):
    """One read job per input, each spilling into its own bucket files, joined in input
    order: whatever the workers and the bucket settings, the bytes of one worker."""
    from gjp.osm import tiling

    # the same output path for every run: the provenance records the command line
    one = tile_osm([monaco, boston], tmp_path / "out", min_entities=1, workers=1)
    expected = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert len(expected) > 10
    two = tile_osm([monaco, boston], tmp_path / "out", min_entities=1, workers=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == expected
    assert two == one
    monkeypatch.setattr(tiling, "_SPILL_BYTES_PER_BUCKET", 50_000)  # buckets holding both inputs
    monkeypatch.setattr(tiling, "_BUCKET_ROWS", 500)  # joined buckets split again
    tile_osm([monaco, boston], tmp_path / "out", min_entities=1, workers=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == expected


def test_a_file_backed_node_index_gets_one_file_per_input(kotka, columbus_circle, tmp_path):
    # inputs read at once must not share an index file; gjp removes the files it named
    inputs = [kotka, columbus_circle]
    tile_osm(inputs, tmp_path / "out", min_entities=1)
    expected = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    tile_osm(inputs, tmp_path / "out", min_entities=1, workers=2, overwrite=True,
             node_index=f"sparse_file_array,{tmp_path / 'nodes.idx'}")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_corrupt_second_input_is_one_line_and_writes_nothing(monaco, tmp_path, run_gjp):
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(monaco.read_bytes()[:300_000])
    for workers in ("1", "2"):
        code, out, err = run_gjp(["tile", monaco, cut, "-o", tmp_path / "t", "--workers", workers])
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"gjp: error: {cut}: corrupt or truncated OSM file ("), err
        assert [p.name for p in tmp_path.iterdir()] == ["cut.osm.pbf"]

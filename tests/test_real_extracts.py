"""The four OSM steps on real extracts, checked against independent computations."""

import math

import numpy as np
import osmium
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from naive_visibility import naive_visibility_edges

from gjp import grid
from gjp.geometry.minbox import bbox
from gjp.geometry.simplify import simplify
from gjp.geometry.visibility import visibility
from gjp.osm.tiling import tile_osm

STEPS = ("tiles", "simplified", "boxed", "graphs")


def run_pipeline(pbf, root, min_entities=1, workers=1):
    report = tile_osm([pbf], root / "tiles", min_entities=min_entities, workers=workers)
    simplify(root / "tiles", root / "simplified", workers=workers)
    bbox(root / "simplified", root / "boxed", workers=workers)
    visibility(root / "boxed", root / "graphs", workers=workers)
    return report


def read_dir(path):
    return pa.concat_tables([pq.read_table(f) for f in sorted(path.glob("*.parquet"))])


@pytest.fixture(scope="module", params=["boston", "kotka", "monaco"])
def pipeline(request, tmp_path_factory):
    pbf = request.getfixturevalue(request.param)
    root = tmp_path_factory.mktemp(request.param)
    report = run_pipeline(pbf, root)
    return pbf, root, report, read_dir(root / "graphs")


def building_polygons(pbf):
    """Complete closed building ways, read independently with plain pyosmium."""
    out = {}
    for w in osmium.FileProcessor(str(pbf), osmium.osm.NODE | osmium.osm.WAY).with_locations():
        if not w.is_way() or "building" not in w.tags or not w.is_closed() or len(w.nodes) < 4:
            continue
        if w.tags.get("area") == "no" or not all(n.location.valid() for n in w.nodes):
            continue
        poly = shapely.Polygon([(n.lon, n.lat) for n in w.nodes])
        out[w.id] = poly if poly.is_valid else shapely.make_valid(poly)
    return out


def test_every_building_is_in_every_tile_it_intersects(pipeline):
    pbf, _, _, table = pipeline
    rows = table.select(["tile", "osm_type", "osm_id", "kind"]).to_pylist()
    got = {}
    for r in rows:
        if r["osm_type"] == "way":
            got.setdefault(r["osm_id"], set()).add(r["tile"])
    buildings = building_polygons(pbf)
    assert len(buildings) > 50
    crossing = 0
    for way_id, poly in buildings.items():
        merc = shapely.transform(poly, lambda c: np.column_stack(grid.lonlat_to_fractional(c[:, 0], c[:, 1], 16)))
        x0, y0, x1, y1 = (int(math.floor(v)) for v in merc.bounds)
        expected = set()
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                if merc.intersection(shapely.box(x, y, x + 1, y + 1)).area > 1e-10:
                    expected.add(grid.tile_name(16, x, y))
        crossing += len(expected) > 1
        assert got.get(way_id, set()) >= expected, f"way {way_id}"
        assert len(got.get(way_id, set()) - expected) == 0 or all(
            merc.intersection(shapely.box(*_box(t))).area > 0 for t in got[way_id] - expected)
    assert crossing > 0  # the extract has buildings cut by tile borders


def _box(tile):
    _, x, y = grid.parse_tile_name(tile)
    return x, y, x + 1, y + 1


def test_geometry_stays_inside_its_tile_and_local_is_in_the_unit_square(pipeline):
    _, _, _, table = pipeline
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    tiles = table.column("tile").to_pylist()
    bounds = shapely.bounds(geoms)
    for (w, s, e, n), t in zip(bounds, tiles):
        tw, ts, te, tn = grid.tile_bounds(*grid.parse_tile_name(t)[1:], 16)
        assert tw - 1e-9 <= w and e <= te + 1e-9 and ts - 1e-9 <= s and n <= tn + 1e-9
    local = shapely.from_wkb(table.column("local").to_numpy(zero_copy_only=False))
    coords = shapely.get_coordinates(local)
    assert coords.min() >= 0.0 and coords.max() <= 1.0
    assert shapely.is_valid(local[shapely.get_dimensions(local) == 2]).all()
    # the frame: y grows to the north, so a tile's northernmost geometry has the largest y
    row = int(np.argmax(bounds[:, 3]))
    assert shapely.bounds(local[row])[3] == pytest.approx(
        max(shapely.bounds(local[i])[3] for i in range(len(tiles)) if tiles[i] == tiles[row]))


def test_min_box_area_matches_shapely_where_the_floor_does_not_apply(pipeline):
    _, _, _, table = pipeline
    local = shapely.from_wkb(table.column("local").to_numpy(zero_copy_only=False))
    w = table.column("min_box_width").to_numpy()
    h = table.column("min_box_height").to_numpy()
    area = table.column("min_box_area").to_numpy()
    _, y = grid.parse_tile_name(table.column("tile")[0].as_py())[1:]
    floor = 1.5 / float(grid.tile_width_m(y, 16))
    free = (w > 1.01 * floor) & (h > 1.01 * floor)
    assert free.sum() > 50
    reference = shapely.area(shapely.minimum_rotated_rectangle(local[free]))
    np.testing.assert_allclose(area[free], reference, rtol=1e-7, atol=1e-14)
    # every box covers its entity
    boxes = table.column("min_box").to_numpy(zero_copy_only=False)
    polys = shapely.polygons(np.stack([np.asarray(b).reshape(4, 2) for b in boxes]))
    assert shapely.covers(shapely.buffer(polys, 1e-9), local).all()


def _graphs(table):
    for r in table.select(["vertices", "vertex_part", "geometry_edges", "visibility_edges"]).to_pylist():
        yield (np.array(r["vertices"]).reshape(-1, 2), r["vertex_part"],
               [tuple(e) for e in r["geometry_edges"]], [tuple(e) for e in r["visibility_edges"]])


def test_visibility_edges_join_parts_without_crossing_the_entity(pipeline):
    """Checked with shapely: a visibility edge may meet the entity's edges only within the
    kernel's tolerance (1e-6 tile units) of its own two ends."""
    _, _, _, table = pipeline
    multipart = 0
    for vertices, parts, edges, vis in _graphs(table):
        if len(set(parts)) < 2:
            assert vis == []
            continue
        multipart += 1
        assert vis, "a multi-part entity has visibility edges"
        segments = shapely.linestrings([[vertices[c], vertices[d]] for c, d in edges]) if edges else []
        for a, b in vis:
            assert parts[a] != parts[b]
            seg = shapely.LineString([vertices[a], vertices[b]])
            if seg.length <= 2e-6 or not len(edges):
                continue
            hits = shapely.intersection(seg, segments)
            hits = hits[~shapely.is_empty(hits)]
            near_ends = shapely.MultiPoint([vertices[a], vertices[b]]).buffer(1.5e-6)
            assert shapely.covers(near_ends, hits).all(), f"edge {a}-{b} crosses the entity"
    assert multipart > 0


def test_kernel_matches_the_naive_reference(pipeline):
    _, _, _, table = pipeline
    compared = 0
    for vertices, parts, edges, vis in _graphs(table):
        if len(set(parts)) < 2 or len(vertices) > 60:
            continue
        assert [tuple(e) for e in vis] == naive_visibility_edges(vertices, parts, edges)
        compared += 1
    assert compared > 0


def test_every_row_survives_and_each_step_only_adds_columns(pipeline):
    _, root, report, _ = pipeline
    tables = [read_dir(root / s) for s in STEPS]
    assert tables[0].num_rows == report.rows_written
    for before, after in zip(tables, tables[1:]):
        assert after.num_rows == before.num_rows
        assert after.column_names[: before.num_columns] == before.column_names
        assert after.select(before.column_names).equals(before)
    assert tables[-1].column_names == [
        "tile", "group", "osm_type", "osm_id", "kind", "tags", "geometry", "bbox", "local",
        "min_box", "min_box_width", "min_box_height", "min_box_area", "min_box_angle",
        "vertices", "vertex_part", "geometry_edges", "visibility_edges"]


def test_files_are_grouped_by_zoom_14_tile(pipeline):
    _, root, _, _ = pipeline
    for f in (root / "graphs").glob("*.parquet"):
        t = pq.read_table(f, columns=["tile", "group"])
        assert set(t.column("group").to_pylist()) == {f.stem}
        for tile in set(t.column("tile").to_pylist()):
            _, x, y = grid.parse_tile_name(tile)
            assert grid.group_name(16, x, y) == f.stem


def test_incomplete_ways_are_reported(kotka, tmp_path):
    report = tile_osm([kotka], tmp_path / "tiles", min_entities=1)
    assert report.read.ways_repaired + report.read.ways_skipped > 50
    assert "missing nodes" in report.summary()


def test_osm_xml_bz2_is_read(west_oakland, tmp_path):
    report = tile_osm([west_oakland], tmp_path / "tiles", min_entities=1)
    assert report.read.polygons > 10 and report.rows_written > 0


def test_relations_from_a_real_extract(columbus_circle, tmp_path):
    tile_osm([columbus_circle], tmp_path / "tiles", min_entities=1)
    table = read_dir(tmp_path / "tiles")
    rel = table.filter(pa.compute.equal(table.column("osm_type"), "relation"))
    kinds = set(rel.column("kind").to_pylist())
    assert {"relation", "multipolygon"} <= kinds
    ids = set(rel.column("osm_id").to_pylist())
    with_tags = {r.id for r in osmium.FileProcessor(str(columbus_circle), osmium.osm.RELATION) if r.tags}
    assert ids <= with_tags  # real relation ids, never pyosmium's area ids (2·id + 1)


def test_fast_simplify_equals_geos_on_everything(pipeline):
    """The numba simplifier only saves work: the result is byte-identical to GEOS'
    topology-preserving simplifier run on every geometry, and most rows never reach GEOS."""
    from gjp.geometry import wkb
    from gjp.geometry.frame import local_coords, metres_to_units, tile_xy
    from gjp.geometry.simplify import TO_GEOS, plan_rows, simplify_wkb

    _, _, _, table = pipeline
    x, y = tile_xy(table.column("tile"))
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    lonlat, row = shapely.get_coordinates(geoms, return_index=True)
    local = shapely.set_coordinates(geoms.copy(), local_coords(lonlat, x[row], y[row], 16))
    tolerance = metres_to_units(0.3, y, 16)
    column = pa.array(shapely.to_wkb(local), pa.binary())
    ours = shapely.from_wkb(simplify_wkb(column, tolerance).to_numpy(zero_copy_only=False))
    walked = wkb.walk(column)
    decision, _ = plan_rows(walked.coords, walked.part_offsets, walked.part_kind, walked.row_part_offsets,
                            wkb.structure_flags(*wkb.binary_buffers(column)), tolerance)
    assert (decision == TO_GEOS).mean() < 0.15  # Boston 4.8%, Kotka 0.8%, Monaco 10%
    geos = shapely.simplify(local, tolerance, preserve_topology=True)
    assert (shapely.to_wkb(ours) == shapely.to_wkb(geos)).all()
    assert (shapely.get_num_coordinates(ours) < shapely.get_num_coordinates(local)).sum() > 10
    stored = table.column("local").to_numpy(zero_copy_only=False)
    assert (stored == shapely.to_wkb(geos)).all()


def test_info_summarises_the_graphs(pipeline):
    from gjp.summary import format_summary, summarize_tiles

    _, root, report, table = pipeline
    s = summarize_tiles(root / "graphs")
    assert s["entities"] == table.num_rows == report.rows_written
    assert s["group_files"] == report.groups_written and s["tiles"] == report.tiles_kept
    assert s["steps"] == ["tile", "simplify", "bbox", "visibility"]
    assert s["visibility_edges"] == sum(len(v) for v in table.column("visibility_edges").to_pylist())
    assert sum(s["kinds"].values()) == s["entities"]
    assert 300 < s["tile_width_m"][0] <= s["tile_width_m"][1] < 520
    text = format_summary(s)
    assert f"{s['tiles']} tiles" in text and "visibility edges" in text


def test_wkb_walker_reads_the_files_like_shapely(pipeline):
    from gjp.geometry import wkb

    _, _, _, table = pipeline
    for name in ("geometry", "local"):
        column = table.column(name)
        geoms = shapely.from_wkb(column.to_numpy(zero_copy_only=False))
        walked = wkb.walk(column)
        assert np.array_equal(walked.coords, shapely.get_coordinates(geoms))
        ids = {0: 1, 1: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7}
        assert walked.row_type.tolist() == [ids[t] for t in shapely.get_type_id(geoms)]


def test_pyosmium_tag_internals_match_the_public_api(monaco):
    """gjp.osm.reader._tag_pairs steps pyosmium's private tag container (11–25% of `gjp tile`,
    DECISIONS.md); without it, it silently falls back to the public API. This test is what
    notices: the internals must exist and give exactly the public API's tags."""
    import osmium.version

    from gjp.osm.reader import _tag_pairs

    version = f"pyosmium {osmium.version.pyosmium_release} (libosmium {osmium.version.libosmium_version})"
    objects = tags = 0
    for obj in osmium.FileProcessor(str(monaco)):
        data = getattr(obj.tags, "_pyosmium_data", None)
        missing = [m for m in ("tags_begin", "tags_next", "tags_size") if not hasattr(data, m)]
        assert not missing, (f"{version}: TagList._pyosmium_data no longer has {', '.join(missing) or 'itself'}; "
                             "gjp/osm/reader.py _tag_pairs now runs on the slower public API: "
                             "adapt it or drop the internals (DECISIONS.md, 'Reading tags')")
        got = list(_tag_pairs(obj.tags))
        want = [(t.k, t.v) for t in obj.tags]
        assert got == want, (f"{version}: pyosmium's tag internals disagree with its public API on "
                             f"{type(obj).__name__} {obj.id}: {got!r} != {want!r}")
        objects += 1
        tags += len(want)
    assert objects > 10_000 and tags > 10_000, (objects, tags)
    assert list(_tag_pairs([osmium.osm.Tag("a", "b")])) == [("a", "b")]  # the fallback

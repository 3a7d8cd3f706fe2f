"""Min boxes, graphs and visibility edges on hand-made geometry (tile units)."""

import math

import numpy as np
import pytest
import shapely
from naive_visibility import naive_visibility_edges, nearest_first_visibility_edges

from gjp.geometry.minbox import min_boxes, unit_hash
from gjp.geometry.visibility import entity_graphs, visibility_edges


def boxes(geoms, min_side=0.0, unit=None):
    geoms = np.array(geoms, dtype=object)
    unit = np.zeros(len(geoms)) if unit is None else np.asarray(unit)
    return min_boxes(geoms, np.full(len(geoms), min_side), unit)


def test_min_box_of_a_rotated_rectangle_is_exact():
    # a 0.2 × 0.05 rectangle turned by 30°: an angle the original's 17 samples never tried
    rect = shapely.affinity.rotate(shapely.box(0.4, 0.45, 0.6, 0.5), 30, origin="centroid")
    b = boxes([rect])
    assert b["min_box_width"][0] == pytest.approx(0.2)
    assert b["min_box_height"][0] == pytest.approx(0.05)
    assert b["min_box_angle"][0] == pytest.approx(math.radians(30))
    corners = shapely.Polygon(b["min_box"][0].reshape(4, 2))
    assert corners.symmetric_difference(rect).area < 1e-12
    assert corners.exterior.is_ccw


def test_min_box_angle_is_canonical():
    # the same rectangle described along its other side gets the same answer
    rect = shapely.affinity.rotate(shapely.box(0.4, 0.45, 0.6, 0.5), 120, origin="centroid")
    b = boxes([rect])
    assert 0 <= b["min_box_angle"][0] < math.pi / 2
    assert b["min_box_angle"][0] == pytest.approx(math.radians(30))
    assert b["min_box_width"][0] == pytest.approx(0.05) and b["min_box_height"][0] == pytest.approx(0.2)


def test_equal_area_boxes_break_ties_by_angle_whatever_the_ring_order():
    # a right triangle at a tile corner has two minimum boxes of equal area: along its
    # legs and along its hypotenuse; the smaller angle (the legs) wins for every start
    # vertex and orientation of the ring
    corners = [(0.0, 0.6), (0.0, 1.0), (0.3, 1.0)]
    rings = [corners[i:] + corners[:i] for i in range(3)]
    rings += [r[::-1] for r in rings]
    b = boxes([shapely.Polygon(r) for r in rings])
    assert np.all(b["min_box_angle"] == 0.0)
    assert np.allclose(sorted([b["min_box_width"][0], b["min_box_height"][0]]), [0.3, 0.4])
    assert np.all(b["min_box"] == b["min_box"][0])


def test_hulls_match_geos():
    from gjp.geometry.minbox import hull_vertices

    rng = np.random.default_rng(3)
    geoms = [shapely.MultiPoint(rng.random((n, 2)).round(2)) for n in (1, 2, 3, 7, 40, 200)]
    geoms += [shapely.LineString([(0, 0), (0.5, 0.5), (1, 1)]),  # collinear: a segment
              shapely.MultiPoint([(0.2, 0.2)] * 3),  # one point, repeated
              shapely.from_wkt("POLYGON ((0 0, 1 0, 1 1, 0.5 1, 0 1, 0 0))")]  # collinear hull vertex
    coords, offsets = hull_vertices(np.array(geoms, dtype=object))
    for i, g in enumerate(geoms):
        ours = coords[offsets[i]:offsets[i + 1]]
        hull = shapely.convex_hull(g)
        expected = shapely.get_coordinates(hull)
        if hull.geom_type == "Polygon":
            expected = expected[:-1]
            assert shapely.Polygon(ours).exterior.is_ccw
        assert sorted(map(tuple, ours)) == sorted(map(tuple, expected))


def test_min_side_floor_widens_about_the_centre():
    line = shapely.LineString([(0.1, 0.1), (0.3, 0.1)])
    b = boxes([line], min_side=0.01)
    assert b["min_box_width"][0] == pytest.approx(0.2) and b["min_box_height"][0] == pytest.approx(0.01)
    assert b["min_box_area"][0] == pytest.approx(0.002)
    ys = b["min_box"][0].reshape(4, 2)[:, 1]
    assert sorted(ys) == pytest.approx([0.095, 0.095, 0.105, 0.105])


def test_points_get_a_seeded_square():
    types = np.array([0, 0, 0], dtype=np.uint64)
    ids = np.array([1, 2, 1], dtype=np.int64)
    u = unit_hash(7, types, ids)
    assert u[0] == u[2] and u[0] != u[1] and np.all((u >= 0) & (u < 1))
    assert not np.array_equal(u, unit_hash(8, types, ids))
    pts = [shapely.Point(0.5, 0.5)] * 3
    b = boxes(pts, min_side=0.003, unit=u)
    assert np.allclose(b["min_box_width"], 0.003) and np.allclose(b["min_box_height"], 0.003)
    assert b["min_box_angle"][0] == pytest.approx(u[0] * math.pi / 2)
    assert np.allclose(b["min_box"][:, 0::2].mean(axis=1), 0.5)


def test_graph_of_a_polygon_with_a_hole():
    poly = shapely.Polygon([(0, 0), (1, 0), (1, 1), (0, 1)], [[(0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6)]])
    line = shapely.LineString([(0, 0), (0.5, 0.5), (1, 0)])
    vertices, part, voff, edges, eoff = entity_graphs(np.array([poly, line], dtype=object))
    assert voff.tolist() == [0, 8, 11]
    assert part.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]  # ring closing vertex not repeated
    assert edges[: eoff[1]].tolist() == [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4]]
    assert edges[eoff[1]:].tolist() == [[8, 9], [9, 10]]  # an open line is not closed


def test_visibility_of_a_polygon_with_a_hole():
    poly = shapely.Polygon([(0, 0), (1, 0), (1, 1), (0, 1)], [[(0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6)]])
    *_, pairs, poff = visibility_edges(np.array([poly], dtype=object), k=1)
    # each outer corner sees the nearest hole corner; each hole corner the nearest outer one
    assert sorted(map(tuple, pairs.tolist())) == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_blocked_candidates_are_skipped():
    # b's nearest vertex of another part (c1) is behind a wall of part 0; it links to c2.
    wall = shapely.LineString([(0.5, 0.0), (0.5, 1.0)])
    left = shapely.Point(0.45, 0.5)
    right_near = shapely.Point(0.55, 0.5)
    right_far = shapely.Point(0.3, 0.9)
    geom = shapely.GeometryCollection([wall, left, right_near, right_far])
    vertices, part, voff, edges, eoff, pairs, poff = visibility_edges(np.array([geom], dtype=object), k=1)
    got = sorted(map(tuple, pairs.tolist()))
    # vertex 2 (left) cannot see 3 (right_near) through the wall; its nearest visible is 4
    assert (2, 3) not in got and (2, 4) in got
    assert got == naive_visibility_edges(vertices, part, edges.tolist(), k=1)


def test_touching_at_the_ends_is_allowed_but_running_along_an_edge_is_not():
    # two collinear segments end to end (a route's consecutive members share a node)
    geom = shapely.MultiLineString([[(0.1, 0.1), (0.2, 0.1)], [(0.2, 0.1), (0.4, 0.1)]])
    vertices, part, voff, edges, eoff, pairs, poff = visibility_edges(np.array([geom], dtype=object), k=1)
    got = sorted(map(tuple, pairs.tolist()))
    assert (1, 2) in got  # the shared node: distance 0, always visible
    assert (0, 3) not in got  # 0→3 runs along both segments
    assert got == naive_visibility_edges(vertices, part, edges.tolist(), k=1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_kernel_matches_naive_reference_on_random_multipolygons(k):
    rng = np.random.default_rng(k)
    geoms = []
    for _ in range(40):
        parts = []
        for _ in range(rng.integers(2, 5)):
            c = rng.random(2) * 0.8 + 0.1
            pts = shapely.MultiPoint(c + (rng.random((rng.integers(3, 9), 2)) - 0.5) * 0.3)
            parts.append(pts.convex_hull)
        geoms.append(shapely.GeometryCollection(parts))
    geoms = np.array(geoms, dtype=object)
    vertices, part, voff, edges, eoff, pairs, poff = visibility_edges(geoms, k=k)
    for e in range(len(geoms)):
        v0, v1 = voff[e], voff[e + 1]
        local_edges = (edges[eoff[e]:eoff[e + 1]] - v0).tolist()
        expected = naive_visibility_edges(vertices[v0:v1], part[v0:v1], local_edges, k=k)
        assert nearest_first_visibility_edges(vertices[v0:v1], part[v0:v1], local_edges, k=k) == expected
        assert (pairs[poff[e]:poff[e + 1]] - v0).tolist() == [list(p) for p in expected]


def test_single_part_entities_have_no_visibility_edges():
    geoms = np.array([shapely.Point(0.5, 0.5), shapely.box(0.1, 0.1, 0.2, 0.2),
                      shapely.LineString([(0, 0), (1, 1)])], dtype=object)
    *_, pairs, poff = visibility_edges(geoms)
    assert len(pairs) == 0 and poff.tolist() == [0, 0, 0, 0]

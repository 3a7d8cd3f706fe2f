"""The numba simplifier against GEOS' topology-preserving one: byte-identical output, and
the rows it cannot vouch for handed to GEOS."""

import numpy as np
import pyarrow as pa
import pytest
import shapely
from shapely import wkt

from gjp.geometry import wkb
from gjp.geometry.simplify import SIMPLIFIED, TO_GEOS, UNCHANGED, plan_rows, simplify_wkb


def geos(geoms, tolerance):
    return shapely.to_wkb(shapely.simplify(geoms, tolerance, preserve_topology=True))


def ours(geoms, tolerance):
    column = pa.array(shapely.to_wkb(geoms), pa.binary())
    return simplify_wkb(column, np.broadcast_to(np.float64(tolerance), len(geoms)).copy()).to_numpy(zero_copy_only=False)


def decisions(geoms, tolerance):
    column = pa.array(shapely.to_wkb(geoms), pa.binary())
    walked = wkb.walk(column)
    flags = wkb.structure_flags(*wkb.binary_buffers(column))
    tol = np.full(len(geoms), float(tolerance))
    return plan_rows(walked.coords, walked.part_offsets, walked.part_kind, walked.row_part_offsets, flags, tol)[0]


def noisy_ring(rng, centre, radius, n, noise):
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * (1 + rng.normal(0, noise, n))
    pts = np.column_stack([centre[0] + r * np.cos(angle), centre[1] + r * np.sin(angle)])
    return np.vstack([pts, pts[:1]])


def random_shapes(seed, count):
    """Lines and rings with vertices DP would drop, some pinched or packed tightly enough
    that flattening would cross another segment or jump another part."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(count):
        kind = rng.integers(0, 7)
        if kind == 0:  # a wandering line
            steps = rng.normal(0, 1, (rng.integers(3, 60), 2)) * [1.0, 0.05]
            shapes.append(shapely.LineString(np.cumsum(steps, axis=0)))
        elif kind == 1:  # a noisy ring
            ring = noisy_ring(rng, (0, 0), 10, rng.integers(6, 80), 0.02)
            shapes.append(shapely.Polygon(ring))
        elif kind == 2:  # a ring with a hole near its shell
            shell = noisy_ring(rng, (0, 0), 10, 60, 0.01)
            hole = noisy_ring(rng, (9.3, 0), 0.5, 8, 0.05)
            shapes.append(shapely.Polygon(shell, [hole]))
        elif kind == 3:  # parts side by side, close enough to be crossed
            a = noisy_ring(rng, (0, 0), 5, 30, 0.03)
            b = noisy_ring(rng, (10.2, 0), 5, 30, 0.03)
            shapes.append(shapely.MultiLineString([a, b]))
        elif kind == 4:  # a closed line (a roundabout)
            shapes.append(shapely.LineString(noisy_ring(rng, (0, 0), 3, rng.integers(5, 40), 0.03)))
        elif kind == 5:  # a one-member multi (GEOS unwraps it) in a collection
            line = shapely.LineString(np.cumsum(rng.normal(0, 1, (20, 2)) * [1.0, 0.05], axis=0))
            shapes.append(shapely.GeometryCollection([shapely.MultiLineString([line]), shapely.Point(0, 0)]))
        else:  # a zigzag folded back on itself
            x = np.arange(30, dtype=float)
            y = rng.normal(0, 0.05, 30)
            back = np.column_stack([x[::-1], y[::-1] + rng.choice([-0.3, 0.3]) + rng.normal(0, 0.05, 30)])
            shapes.append(shapely.LineString(np.vstack([np.column_stack([x, y]), back])))
    return np.array(shapes, dtype=object)


@pytest.mark.parametrize("tolerance", [0.05, 0.2, 0.6])
def test_byte_identical_to_geos_on_random_shapes(tolerance):
    shapes = random_shapes(seed=7, count=400)
    assert (ours(shapes, tolerance) == geos(shapes, tolerance)).all()
    counts = np.bincount(decisions(shapes, tolerance), minlength=3)
    # both paths really run (these shapes are made to conflict; on real extracts 2–20%
    # of the rows reach GEOS: see test_real_extracts)
    assert counts[SIMPLIFIED] > 100 and counts[TO_GEOS] > 10


def test_a_flattening_that_would_cross_the_line_is_left_to_geos():
    # Douglas–Peucker would flatten 0,0 – 5,0.01 – 10,0 to the x axis, which the last
    # segment crosses at 5,0: GEOS keeps the bend
    line = wkt.loads("LINESTRING (0 0, 5 0.01, 10 0, 10 1, 5 0.005, 5 -1)")
    shapes = np.array([line], dtype=object)
    assert decisions(shapes, 0.02).tolist() == [TO_GEOS]
    assert shapely.from_wkb(ours(shapes, 0.02)[0]).equals_exact(line, 0)
    assert (ours(shapes, 0.02) == geos(shapes, 0.02)).all()
    # without the crossing segment the same bend goes, and no GEOS is needed
    free = np.array([wkt.loads("LINESTRING (0 0, 5 0.01, 10 0, 10 1)")], dtype=object)
    assert decisions(free, 0.02).tolist() == [SIMPLIFIED]
    assert shapely.from_wkb(ours(free, 0.02)[0]).wkt == "LINESTRING (0 0, 10 0, 10 1)"


def test_a_ring_whose_start_vertex_can_go_is_left_to_geos():
    # the start vertex sits on the segment between its neighbours: GEOS drops it and
    # starts the ring at another vertex
    ring = np.array([wkt.loads("POLYGON ((5 0.001, 10 0, 10 10, 0 10, 0 0, 5 0.001))")], dtype=object)
    assert decisions(ring, 0.01).tolist() == [TO_GEOS]
    assert (ours(ring, 0.01) == geos(ring, 0.01)).all()


def next_up(x):
    return np.nextafter(x, np.inf)


@pytest.mark.parametrize("tolerance", [0.25, 0.25 * (1 + 5e-13), 0.25 * (1 - 5e-13)])
def test_a_vertex_at_the_tolerance_is_left_to_geos(tolerance):
    # GEOS flattens when the furthest distance is ≤ the tolerance. Here it is 0.25
    # exactly: one rounding step either way in GEOS' distance (a GEOS built with fused
    # multiply-adds, as on ARM) flips the outcome, so plan_rows must not decide the row
    # (the first near-tie guard).
    line = np.array([wkt.loads("LINESTRING (0 0, 0.5 0.25, 1 0)")], dtype=object)
    assert decisions(line, tolerance).tolist() == [TO_GEOS]
    assert (ours(line, tolerance) == geos(line, tolerance)).all()
    # the flip itself: 1 ulp further from the chord and GEOS keeps the vertex
    assert shapely.from_wkb(geos(line, 0.25)[0]).wkt == "LINESTRING (0 0, 1 0)"
    bumped = np.array([shapely.LineString([(0, 0), (0.5, next_up(0.25)), (1, 0)])], dtype=object)
    assert len(shapely.get_coordinates(shapely.from_wkb(geos(bumped, 0.25)[0]))) == 3
    # clear of the tie, numba decides
    assert decisions(line, 0.2).tolist() == [UNCHANGED]
    assert decisions(line, 0.3).tolist() == [SIMPLIFIED]


@pytest.mark.parametrize("second_y", [1.0, 1.0 - 2e-16, 1.0 + 4e-16])
def test_two_vertices_tied_for_furthest_are_left_to_geos(second_y):
    # 1,1 and 2,1 (or 2,y within 1e-12 of it) are equally far from the chord 0,0 – 3,0.
    # GEOS splits at the first strictly furthest: at 1,1, whereupon 2,1 goes (its distance
    # to 1,1 – 3,0 is 0.45), and splitting at 2,1 would keep 2,1 and drop 1,1 instead. A
    # GEOS rounding one step differently can split at either, so plan_rows must not
    # decide the row (the second near-tie guard).
    line = np.array([shapely.LineString([(0, 0), (1, 1), (2, second_y), (3, 0)])], dtype=object)
    assert decisions(line, 0.5).tolist() == [TO_GEOS]
    assert (ours(line, 0.5) == geos(line, 0.5)).all()
    # the flip itself: 2,1 a step further out, and GEOS keeps it instead of 1,1
    exact = np.array([wkt.loads("LINESTRING (0 0, 1 1, 2 1, 3 0)")], dtype=object)
    assert shapely.from_wkb(geos(exact, 0.5)[0]).wkt == "LINESTRING (0 0, 1 1, 3 0)"
    bumped = np.array([shapely.LineString([(0, 0), (1, 1), (2, next_up(1.0)), (3, 0)])], dtype=object)
    assert shapely.get_coordinates(shapely.from_wkb(geos(bumped, 0.5)[0]))[1].tolist() == [2.0, next_up(1.0)]
    # clear of the tie, numba decides
    apart = np.array([wkt.loads("LINESTRING (0 0, 1 1, 2 0.9, 3 0)")], dtype=object)
    assert decisions(apart, 0.5).tolist() == [SIMPLIFIED]
    assert (ours(apart, 0.5) == geos(apart, 0.5)).all()


def test_untouched_geometries_keep_their_bytes():
    shapes = np.array([wkt.loads(w) for w in [
        "POINT (1 2)", "MULTIPOINT ((1 2), (3 4))", "LINESTRING (0 0, 1 1)",
        "POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))"]], dtype=object)
    column = pa.array(shapely.to_wkb(shapes), pa.binary())
    assert decisions(shapes, 0.1).tolist() == [UNCHANGED] * 4
    assert simplify_wkb(column, np.full(4, 0.1)) is column


def test_structure_flags():
    cases = {
        "LINESTRING (0 0, 1 1)": 0,
        "MULTILINESTRING ((0 0, 1 1))": wkb.HAS_SINGLETON_MULTI,
        "MULTILINESTRING ((0 0, 1 1), (2 2, 3 3))": 0,
        "GEOMETRYCOLLECTION (POINT (1 1))": 0,
        "GEOMETRYCOLLECTION (MULTIPOINT ((1 1)), POINT (2 2))": wkb.HAS_SINGLETON_MULTI,
        "GEOMETRYCOLLECTION (LINESTRING EMPTY, POINT (2 2))": wkb.HAS_EMPTY,
        "POLYGON EMPTY": wkb.HAS_EMPTY,
    }
    geoms = [wkt.loads(w) for w in cases]
    column = pa.array(shapely.to_wkb(geoms), pa.binary())
    assert wkb.structure_flags(*wkb.binary_buffers(column)).tolist() == list(cases.values())
    big = pa.array([shapely.to_wkb(geoms[0], byte_order=0), shapely.to_wkb(shapely.Point(1, 2, 3))], pa.binary())
    assert wkb.structure_flags(*wkb.binary_buffers(big)).tolist() == [wkb.NOT_PLAIN, wkb.NOT_PLAIN]
    # such rows are simplified by GEOS, so their output is still GEOS'
    line = shapely.LineString([(0, 0), (1, 0.001), (2, 0)])
    column = pa.array([shapely.to_wkb(line, byte_order=0)], pa.binary())
    out = simplify_wkb(column, np.array([0.01])).to_numpy(zero_copy_only=False)
    assert shapely.from_wkb(out[0]).wkt == "LINESTRING (0 0, 2 0)"


def test_chunked_and_large_binary_columns():
    shapes = random_shapes(seed=3, count=60)
    wkbs = shapely.to_wkb(shapes)
    column = pa.chunked_array([pa.array(wkbs[:25], pa.large_binary()), pa.array(wkbs[25:], pa.large_binary())])
    out = simplify_wkb(column, np.full(len(shapes), 0.2)).to_numpy(zero_copy_only=False)
    assert (out == geos(shapes, 0.2)).all()


def test_an_empty_column():
    column = pa.array([], pa.binary())
    assert len(simplify_wkb(column, np.zeros(0))) == 0

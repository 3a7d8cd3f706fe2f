"""``gjp simplify``: the tile-local geometry (``local``), Douglas–Peucker-simplified with a
tolerance in metres.

The tolerance is converted to tile units per tile row (a z16 tile is 611.5·cos(lat) m
wide). Simplification preserves topology, and its output is byte for byte that of GEOS'
topology-preserving simplifier: rings never collapse or self-intersect, holes stay holes,
and no part disappears.

GEOS is only called for the rows where it could differ from plain Douglas–Peucker (at
0.3 m, under 10% of the rows on 11 of the 13 OSM extracts it was checked on). A numba pass
(:func:`plan_rows`) runs the same recursion as GEOS, with GEOS' distance formula, on
every line and ring, and accepts its result when it can show that GEOS would accept every
flattening too:

- no flattened segment meets another segment of the geometry (as input, or flattened)
  except at one shared end point: a superset of the segments GEOS tests at any moment;
- no vertex of another part lies in a flattened section's envelope (GEOS' "jump" test);
- closed lines flatten nothing at recursion depth ≤ 2 (GEOS keeps ≥ 4 points there), and
  their start vertex is not within tolerance of its kept neighbours' segment (GEOS would
  then remove it and start the ring elsewhere);
- no decision is within 1e-12 (relative) of a tie, the row is little-endian 2D WKB, and
  it has no empty member or one-member multi (GEOS drops or unwraps those).

Anything else goes to GEOS. The projection to the local frame rewrites coordinates inside
the WKB bytes (:mod:`gjp.geometry.wkb`), and simplified rows are cut from those bytes, so
only the rows GEOS simplifies are ever decoded.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from gjp.errors import GjpError
from gjp.geometry import wkb
from gjp.geometry.frame import local_coords, metres_to_units, tile_xy
from gjp.jit import njit
from gjp.stages import StageReport, add_columns, run_stage
from gjp.ui import QUIET, Reporter

#: The paper's tolerance, ≈ 3e-6 degrees ≈ 0.3 m.
DEFAULT_TOLERANCE_M = 0.3


#: What the numba pass decides for each row.
UNCHANGED, SIMPLIFIED, TO_GEOS = 0, 1, 2
#: Past this many segment pair tests in one row, GEOS' spatial index is the better deal.
_MAX_PAIR_TESTS = 4_000_000
#: Decisions closer than this (relative) to a tie are left to GEOS: one rounding step in
#: GEOS' arithmetic (a GEOS built with fused multiply-adds, as on ARM) would break them the
#: other way, and with them the output (tests/test_simplify.py: one test per guard).
_NEAR = 1e-12


@njit(inline="always", error_model="numpy")
def _distance(px, py, ax, ay, bx, by):
    """Point–segment distance, with GEOS' formula and order of operations (the furthest
    vertex and the tolerance test must come out as GEOS' do)."""
    if ax == bx and ay == by:
        return np.sqrt((px - ax) * (px - ax) + (py - ay) * (py - ay))
    length2 = (bx - ax) * (bx - ax) + (by - ay) * (by - ay)
    r = ((px - ax) * (bx - ax) + (py - ay) * (by - ay)) / length2
    if r <= 0.0:
        return np.sqrt((px - ax) * (px - ax) + (py - ay) * (py - ay))
    if r >= 1.0:
        return np.sqrt((px - bx) * (px - bx) + (py - by) * (py - by))
    s = ((ay - py) * (bx - ax) - (ax - px) * (by - ay)) / length2
    return abs(s) * np.sqrt(length2)


@njit(inline="always", error_model="numpy")
def _turn(ax, ay, bx, by, cx, cy):
    """+1 / −1 for a left / right turn a→b→c, 0 when round-off could decide it (a wide
    margin over the exact-sign bound of the floating-point determinant)."""
    left = (bx - ax) * (cy - ay)
    right = (by - ay) * (cx - ax)
    margin = 1e-14 * (abs(left) + abs(right))
    if left - right > margin:
        return 1
    if left - right < -margin:
        return -1
    return 0


@njit(inline="always", error_model="numpy")
def _may_meet_badly(ax, ay, bx, by, cx, cy, dx, dy):
    """Whether segments ab and cd might meet anywhere but at one shared end point, the
    one contact GEOS' topology check allows. Errs towards yes."""
    if max(cx, dx) < min(ax, bx) or min(cx, dx) > max(ax, bx) or \
            max(cy, dy) < min(ay, by) or min(cy, dy) > max(ay, by):
        return False
    if (ax == bx and ay == by) or (cx == dx and cy == dy):
        return True
    ac, ad = ax == cx and ay == cy, ax == dx and ay == dy
    bc, bd = bx == cx and by == cy, bx == dx and by == dy
    if (ac or ad) and (bc or bd):
        return True  # the same segment
    if ac or ad or bc or bd:
        # one shared end: they meet elsewhere only if collinear and pointing the same way
        px, py = (ax, ay) if ac or ad else (bx, by)
        rx, ry = (bx, by) if ac or ad else (ax, ay)
        qx, qy = (dx, dy) if ac or bc else (cx, cy)
        if _turn(px, py, rx, ry, qx, qy) != 0:
            return False
        along = (rx - px) * (qx - px) + (ry - py) * (qy - py)
        return along >= -1e-14 * (abs((rx - px) * (qx - px)) + abs((ry - py) * (qy - py)))
    c_side, d_side = _turn(ax, ay, bx, by, cx, cy), _turn(ax, ay, bx, by, dx, dy)
    if c_side == 0 or d_side == 0:
        return True
    if c_side == d_side:
        return False
    a_side, b_side = _turn(cx, cy, dx, dy, ax, ay), _turn(cx, cy, dx, dy, bx, by)
    return a_side == 0 or b_side == 0 or a_side != b_side


@njit(nogil=True, error_model="numpy")
def plan_rows(coords, part_offsets, part_kind, row_part_offsets, flags, tolerance):
    """Douglas–Peucker on every line and ring, deciding per row whether the result is
    provably what GEOS' topology-preserving simplifier returns (see the module doc).

    Returns ``(decision per row, keep per coordinate)``; ``keep`` is meaningful for
    SIMPLIFIED rows (the vertices that remain).
    """
    rows = len(row_part_offsets) - 1
    decision = np.zeros(rows, dtype=np.int8)
    keep = np.ones(len(coords), dtype=np.bool_)
    flat_start = np.empty(len(coords), dtype=np.int64)  # flattened sections of a row
    flat_end = np.empty(len(coords), dtype=np.int64)
    flat_part = np.empty(len(coords), dtype=np.int64)
    stack = np.empty((len(coords) + 1, 3), dtype=np.int64)
    for r in range(rows):
        if flags[r] != 0:
            # not little-endian 2D (its bytes would need re-encoding), or with an empty
            # member (GEOS drops it) or a one-member multi (GEOS unwraps it)
            decision[r] = TO_GEOS
            continue
        first_part, end_part = row_part_offsets[r], row_part_offsets[r + 1]
        tol = tolerance[r]
        n_flat, n_segments, to_geos = 0, 0, False
        for p in range(first_part, end_part):
            if part_kind[p] == wkb.POINT:
                continue
            s, e = part_offsets[p], part_offsets[p + 1] - 1
            n_segments += max(e - s, 0)
            if e - s < 2:
                continue
            closed = coords[s, 0] == coords[e, 0] and coords[s, 1] == coords[e, 1]
            stack[0, 0], stack[0, 1], stack[0, 2] = s, e, 1
            top = 1
            while top > 0:
                top -= 1
                i, j, depth = stack[top, 0], stack[top, 1], stack[top, 2]
                if j == i + 1:
                    continue
                far, far_d, second_d = i, -1.0, -1.0
                ax, ay, bx, by = coords[i, 0], coords[i, 1], coords[j, 0], coords[j, 1]
                for k in range(i + 1, j):
                    d = _distance(coords[k, 0], coords[k, 1], ax, ay, bx, by)
                    if d > far_d:
                        far, far_d, second_d = k, d, far_d
                    elif d > second_d:
                        second_d = d
                if abs(far_d - tol) <= _NEAR * tol:
                    to_geos = True
                elif far_d <= tol:
                    # GEOS keeps ≥ 4 points in a closed line: it refuses flattening at
                    # depth ≤ 2 until enough are kept
                    if closed and depth <= 2:
                        to_geos = True
                    for k in range(i + 1, j):
                        keep[k] = False
                    flat_start[n_flat], flat_end[n_flat], flat_part[n_flat] = i, j, p
                    n_flat += 1
                else:
                    if far_d - second_d <= _NEAR * far_d:
                        # where GEOS splits hangs on the last bit; exact ties too: a GEOS
                        # built with fused multiply-adds (ARM) may break them otherwise
                        to_geos = True
                    stack[top, 0], stack[top, 1], stack[top, 2] = far, j, depth + 1
                    stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2] = i, far, depth + 1
                    top += 2
                if to_geos:
                    break
            if to_geos:
                break
            if closed:
                # GEOS may then drop the start vertex (and start the ring elsewhere) if it
                # lies within tolerance of its kept neighbours' segment
                kept, after, before = 0, -1, -1
                for k in range(s, e + 1):
                    if keep[k]:
                        kept += 1
                        if after < 0 and k > s:
                            after = k
                        if k < e:
                            before = k
                if kept > 4 and _distance(coords[s, 0], coords[s, 1], coords[before, 0], coords[before, 1],
                                          coords[after, 0], coords[after, 1]) <= tol * (1.0 + _NEAR):
                    to_geos = True
                    break
        if to_geos:
            decision[r] = TO_GEOS
            continue
        if n_flat == 0:
            continue  # UNCHANGED
        n_coords = part_offsets[end_part] - part_offsets[first_part]
        if n_flat * (n_segments + n_flat + n_coords) > _MAX_PAIR_TESTS:
            decision[r] = TO_GEOS
            continue
        # GEOS flattens a section only if the new segment meets no other segment of the
        # geometry (input or already simplified) except at a shared end, and no other
        # part's vertex lies in the section's envelope where the part could be jumped.
        # Testing against every input segment and every flattened one is a superset of
        # what GEOS tests at any moment, so passing here means GEOS flattened it too.
        for f in range(n_flat):
            i, j, p = flat_start[f], flat_end[f], flat_part[f]
            ax, ay, bx, by = coords[i, 0], coords[i, 1], coords[j, 0], coords[j, 1]
            xmin, xmax = coords[i:j + 1, 0].min(), coords[i:j + 1, 0].max()
            ymin, ymax = coords[i:j + 1, 1].min(), coords[i:j + 1, 1].max()
            for q in range(first_part, end_part):
                qs, qe = part_offsets[q], part_offsets[q + 1] - 1
                if q != p:
                    for k in range(qs, qe + 1):
                        if xmin <= coords[k, 0] <= xmax and ymin <= coords[k, 1] <= ymax:
                            to_geos = True
                            break
                if part_kind[q] != wkb.POINT:
                    for k in range(qs, qe):
                        if q == p and i <= k < j:
                            continue
                        if _may_meet_badly(ax, ay, bx, by, coords[k, 0], coords[k, 1], coords[k + 1, 0], coords[k + 1, 1]):
                            to_geos = True
                            break
                if to_geos:
                    break
            if not to_geos:
                for g in range(n_flat):
                    if g != f and _may_meet_badly(ax, ay, bx, by, coords[flat_start[g], 0], coords[flat_start[g], 1],
                                                  coords[flat_end[g], 0], coords[flat_end[g], 1]):
                        to_geos = True
                        break
            if to_geos:
                break
        decision[r] = TO_GEOS if to_geos else SIMPLIFIED
    return decision, keep


@njit(nogil=True)
def _drop_vertices(data, offsets, coord_pos, part_offsets, row_part_offsets, decision, keep):
    """The column's bytes with the removed vertices of SIMPLIFIED rows cut out and their
    lines' and rings' point counts lowered (little-endian 2D rows, as planned)."""
    rows = len(offsets) - 1
    out_offsets = np.empty(rows + 1, dtype=np.int64)
    out_offsets[0] = 0
    for r in range(rows):
        size = offsets[r + 1] - offsets[r]
        if decision[r] == SIMPLIFIED:
            for c in range(part_offsets[row_part_offsets[r]], part_offsets[row_part_offsets[r + 1]]):
                if not keep[c]:
                    size -= 16
        out_offsets[r + 1] = out_offsets[r] + size
    out = np.empty(out_offsets[rows], dtype=np.uint8)
    for r in range(rows):
        src, dst, end = offsets[r], out_offsets[r], offsets[r + 1]
        if decision[r] == SIMPLIFIED:
            for p in range(row_part_offsets[r], row_part_offsets[r + 1]):
                s, e = part_offsets[p], part_offsets[p + 1]
                kept = 0
                for c in range(s, e):
                    kept += keep[c]
                if kept == e - s:
                    continue
                count_at = coord_pos[s] - 4
                out[dst:dst + count_at - src] = data[src:count_at]
                dst += count_at - src
                for b in range(4):
                    out[dst + b] = (kept >> (8 * b)) & 0xFF
                dst += 4
                for c in range(s, e):
                    if keep[c]:
                        out[dst:dst + 16] = data[coord_pos[c]:coord_pos[c] + 16]
                        dst += 16
                src = coord_pos[e - 1] + 16
        out[dst:dst + end - src] = data[src:end]
    return out, out_offsets


def simplify_wkb(local: pa.Array | pa.ChunkedArray, tolerance: np.ndarray, walked: wkb.Walk | None = None) -> pa.Array:
    """GEOS' topology-preserving simplification of a WKB column of local geometries,
    byte for byte; most rows never reach GEOS (see the module doc). ``walked``: the
    column's walk, if at hand."""
    walked = wkb.walk(local) if walked is None else walked
    data, offsets = wkb.binary_buffers(local)
    flags = wkb.structure_flags(data, offsets)
    decision, keep = plan_rows(walked.coords, walked.part_offsets, walked.part_kind, walked.row_part_offsets,
                               flags, np.ascontiguousarray(tolerance, dtype=np.float64))
    if not decision.any():
        return local
    out, out_offsets = _drop_vertices(data, offsets, walked.coord_pos, walked.part_offsets,
                                      walked.row_part_offsets, decision, keep)
    result = wkb.binary_array(out, out_offsets)
    rows = np.flatnonzero(decision == TO_GEOS)
    if len(rows) == 0:
        return result
    geoms = shapely.from_wkb(result.take(pa.array(rows)).to_numpy(zero_copy_only=False))
    simplified = shapely.to_wkb(shapely.simplify(geoms, tolerance[rows], preserve_topology=True))
    return pc.replace_with_mask(result, pa.array(decision == TO_GEOS), pa.array(simplified, result.type))


def simplify_table(table: pa.Table, zoom: int, tolerance_m: float = DEFAULT_TOLERANCE_M) -> pa.Table:
    # the coordinates are rewritten inside the WKB, so no geometry is built except for
    # the rows GEOS simplifies
    geometry = table.column("geometry")
    walked = wkb.walk(geometry)
    x, y = tile_xy(table.column("tile"))
    row = walked.row_of_coord()
    coords = local_coords(walked.coords, x[row], y[row], zoom)
    local = wkb.with_coords(geometry, walked, coords)
    if tolerance_m > 0:
        # the local column has the geometry column's structure, with these coordinates
        local = simplify_wkb(local, metres_to_units(tolerance_m, y, zoom), dataclasses.replace(walked, coords=coords))
    return add_columns(table, {"local": local})


def simplify(input_dir="tiles", output_dir="simplified", *, tolerance_m: float = DEFAULT_TOLERANCE_M,
             workers: int = 1, scheduler: str | None = None, overwrite: bool = False,
             reporter: Reporter = QUIET) -> StageReport:
    """``gjp simplify``: add ``local`` to every group file of ``input_dir`` (on ``workers``
    threads, or on the Dask cluster at ``scheduler``)."""
    if tolerance_m < 0:
        raise GjpError(f"--tolerance must be ≥ 0 metres, got {tolerance_m}")
    return run_stage("simplify", simplify_table, input_dir, output_dir, require=("tile", "geometry"),
                     params={"tolerance_m": tolerance_m}, workers=workers, scheduler=scheduler,
                     overwrite=overwrite, reporter=reporter)

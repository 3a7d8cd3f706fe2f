"""``gjp bbox``: each entity's minimum-area rotated rectangle (its "min box").

Exact rotating calipers: the minimum-area enclosing rectangle has a side collinear with an
edge of the convex hull, so every hull edge is tried (a numba kernel over all entities of
a file at once). The original sampled 17 angles and missed many.

Conventions (all in tile units, see :mod:`gjp.geometry.frame`):

* ``min_box_angle`` θ ∈ [0, π/2): the direction u = (cos θ, sin θ) of the side called
  *width*; v = (−sin θ, cos θ) is the *height* direction. Every rectangle has exactly one
  such description.
* ``min_box`` = the 4 corners c − w/2·u − h/2·v, c + w/2·u − h/2·v, c + w/2·u + h/2·v,
  c − w/2·u + h/2·v (counter-clockwise), flattened to 8 numbers x0 y0 … x3 y3.
* Sides shorter than ``min_side_m`` (1.5 m) are widened about the centre to that length,
  and width, height and area describe the widened box.
* Of rectangles with the same area (within 1e-12, e.g. the two of a right triangle), the
  one with the smaller angle is taken.
* A point (or an entity whose vertices coincide) gets a square of side ``min_side_m``
  whose angle comes from a hash of (seed, OSM type, OSM id): seeded and reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from gjp.errors import GjpError
from gjp.geometry import wkb
from gjp.geometry.frame import dictionary_codes, metres_to_units, tile_xy
from gjp.jit import njit
from gjp.stages import StageReport, add_columns, run_stage
from gjp.ui import QUIET, Reporter

DEFAULT_MIN_SIDE_M = 1.5
_OSM_TYPE_CODE = {"node": 0, "way": 1, "relation": 2}


@njit(nogil=True)
def min_area_rectangles(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per entity (hull vertices ``coords[offsets[e]:offsets[e+1]]``, no repeated closing
    vertex): centre x, centre y, width, height, angle of the width side (radians, any
    range). Degenerate hulls (one distinct point) give width = height = 0, angle NaN."""
    n = len(offsets) - 1
    out = np.full((n, 5), np.nan)
    for e in range(n):
        s, t = offsets[e], offsets[e + 1]
        if t <= s:
            continue
        best, best_key = np.inf, np.inf
        cx, cy, bw, bh, ba = coords[s, 0], coords[s, 1], 0.0, 0.0, np.nan
        m = t - s
        for i in range(m):
            j = i + 1 if i + 1 < m else 0
            dx = coords[s + j, 0] - coords[s + i, 0]
            dy = coords[s + j, 1] - coords[s + i, 1]
            length = math.hypot(dx, dy)
            if length == 0.0:
                continue
            ux, uy = dx / length, dy / length
            lo_u, hi_u, lo_v, hi_v = np.inf, -np.inf, np.inf, -np.inf
            for p in range(s, t):
                pu = coords[p, 0] * ux + coords[p, 1] * uy
                pv = -coords[p, 0] * uy + coords[p, 1] * ux
                lo_u, hi_u = min(lo_u, pu), max(hi_u, pu)
                lo_v, hi_v = min(lo_v, pv), max(hi_v, pv)
            area = (hi_u - lo_u) * (hi_v - lo_v)
            # the width side's direction modulo a quarter turn: the same for the four
            # edge directions of one rectangle, and the tie-break between rectangles of
            # equal area (a right triangle has two), whatever vertex the hull starts at
            key = math.atan2(uy, ux) % (0.5 * math.pi)
            if key > 0.5 * math.pi - 1e-12:
                key = 0.0
            if area < best * (1.0 - 1e-12) or (area <= best * (1.0 + 1e-12) and key < best_key):
                best, best_key = area, key
                mu, mv = 0.5 * (lo_u + hi_u), 0.5 * (lo_v + hi_v)
                cx, cy = mu * ux - mv * uy, mu * uy + mv * ux
                bw, bh, ba = hi_u - lo_u, hi_v - lo_v, math.atan2(uy, ux)
        out[e, 0], out[e, 1], out[e, 2], out[e, 3], out[e, 4] = cx, cy, bw, bh, ba
    return out


def unit_hash(seed: int, osm_type: np.ndarray, osm_id: np.ndarray) -> np.ndarray:
    """A reproducible number in [0, 1) per (seed, OSM type, OSM id) (splitmix64)."""
    with np.errstate(over="ignore"):
        z = (np.full(len(osm_id), seed, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z ^= osm_type.astype(np.uint64) << np.uint64(60)
        z ^= osm_id.astype(np.int64).view(np.uint64)
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@njit(nogil=True)
def _hulls(coords: np.ndarray, offsets: np.ndarray):
    """Convex hulls (Andrew's monotone chain) of point sets ``coords[offsets[e]:offsets[e+1]]``,
    each sorted by x then y: counter-clockwise from the lowest-x point, collinear points
    left out, so a hull has 1 (a point), 2 (a segment) or ≥ 3 vertices."""
    n = len(offsets) - 1
    out = np.empty_like(coords)
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    chain = np.empty(len(coords) + 1, dtype=np.int64)
    filled = 0
    for e in range(n):
        s, t = offsets[e], offsets[e + 1]
        h = 0
        for turn in range(2):  # lower chain left to right, then upper chain back
            base = h
            for step in range(t - s):
                i = s + step if turn == 0 else t - 1 - step
                while h >= base + 2:
                    o, a = chain[h - 2], chain[h - 1]
                    cross = ((coords[a, 0] - coords[o, 0]) * (coords[i, 1] - coords[o, 1])
                             - (coords[a, 1] - coords[o, 1]) * (coords[i, 0] - coords[o, 0]))
                    if cross > 0.0:
                        break
                    h -= 1
                if h > base and coords[chain[h - 1], 0] == coords[i, 0] and coords[chain[h - 1], 1] == coords[i, 1]:
                    continue  # a repeated point
                chain[h] = i
                h += 1
            h -= 1  # each chain's last point starts the other one
            base = h
        m = max(h, 1) if t > s else 0
        if m == 2 and coords[chain[0], 0] == coords[chain[1], 0] and coords[chain[0], 1] == coords[chain[1], 1]:
            m = 1
        for q in range(m):
            out[filled + q] = coords[chain[q]]
        filled += m
        out_offsets[e + 1] = filled
    return out[:filled].copy(), out_offsets


@njit(nogil=True)
def _sort_by_x_then_y(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each point set ``coords[offsets[e]:offsets[e+1]]`` sorted by x, then y (one
    sort per set is far cheaper than a global three-key sort of every coordinate)."""
    out = coords.copy()
    for e in range(len(offsets) - 1):
        s, t = offsets[e], offsets[e + 1]
        if t - s <= 32:  # insertion sort: most entities have a handful of vertices
            for i in range(s + 1, t):
                x, y = out[i, 0], out[i, 1]
                j = i - 1
                while j >= s and (out[j, 0] > x or (out[j, 0] == x and out[j, 1] > y)):
                    out[j + 1, 0], out[j + 1, 1] = out[j, 0], out[j, 1]
                    j -= 1
                out[j + 1, 0], out[j + 1, 1] = x, y
        else:  # stable sorts: by y, then by x
            block = coords[s:t]
            by_y = np.argsort(block[:, 1], kind="mergesort")
            order = by_y[np.argsort(block[by_y, 0], kind="mergesort")]
            for i in range(t - s):
                out[s + i, 0], out[s + i, 1] = block[order[i], 0], block[order[i], 1]
    return out


def hull_vertices(geoms) -> tuple[np.ndarray, np.ndarray]:
    """Convex-hull vertices of each geometry (a WKB column, or shapely geometries) as CSR
    (``coords``, ``offsets``), counter-clockwise, without a closing vertex."""
    walked = wkb.walk(geoms)
    offsets = walked.row_coord_offsets()
    return _hulls(_sort_by_x_then_y(walked.coords, offsets), offsets)


def min_boxes(geoms, min_side: np.ndarray, point_unit: np.ndarray) -> dict[str, np.ndarray]:
    """Min boxes of local geometries (a WKB column, or shapely geometries); ``min_side`` in tile units per row, ``point_unit`` a
    number in [0, 1) per row that fixes the angle of degenerate (point) boxes."""
    coords, offsets = hull_vertices(geoms)
    rect = min_area_rectangles(coords, offsets)
    cx, cy, w, h, angle = rect.T.copy()
    # one description per rectangle: angle in [0, π/2), swapping width and height
    angle = np.mod(angle, math.pi)
    turn = angle >= math.pi / 2
    angle[turn] -= math.pi / 2
    w[turn], h[turn] = h[turn], w[turn].copy()
    degenerate = (w == 0) & (h == 0)
    angle[degenerate] = point_unit[degenerate] * (math.pi / 2)
    angle[angle >= math.pi / 2] = 0.0  # round-off at the top of the range
    w, h = np.maximum(w, min_side), np.maximum(h, min_side)
    ux, uy = np.cos(angle), np.sin(angle)
    vx, vy = -uy, ux
    corners = np.empty((len(geoms), 8))
    for k, (su, sv) in enumerate(((-1, -1), (1, -1), (1, 1), (-1, 1))):
        corners[:, 2 * k] = cx + su * w / 2 * ux + sv * h / 2 * vx
        corners[:, 2 * k + 1] = cy + su * w / 2 * uy + sv * h / 2 * vy
    return {"min_box": corners, "min_box_width": w, "min_box_height": h,
            "min_box_area": w * h, "min_box_angle": angle}


def bbox_table(table: pa.Table, zoom: int, min_side_m: float = DEFAULT_MIN_SIDE_M, seed: int = 0) -> pa.Table:
    _, y = tile_xy(table.column("tile"))
    codes, names = dictionary_codes(table.column("osm_type"))
    types = np.array([_OSM_TYPE_CODE[t] for t in names], dtype=np.uint64)[codes]
    ids = table.column("osm_id").to_numpy()
    boxes = min_boxes(table.column("local"), metres_to_units(min_side_m, y, zoom), unit_hash(seed, types, ids))
    columns = {"min_box": pa.FixedSizeListArray.from_arrays(pa.array(boxes["min_box"].ravel()), 8)}
    for name in ("min_box_width", "min_box_height", "min_box_area", "min_box_angle"):
        columns[name] = pa.array(boxes[name], pa.float64())
    return add_columns(table, columns)


def bbox(input_dir="simplified", output_dir="boxed", *, min_side_m: float = DEFAULT_MIN_SIDE_M,
         seed: int = 0, workers: int = 1, scheduler: str | None = None, overwrite: bool = False,
         reporter: Reporter = QUIET) -> StageReport:
    """``gjp bbox``: add the min-box columns to every group file of ``input_dir`` (on
    ``workers`` threads, or on the Dask cluster at ``scheduler``)."""
    if min_side_m <= 0:
        raise GjpError(f"--min-side must be > 0 metres, got {min_side_m}")
    return run_stage("bbox", bbox_table, input_dir, output_dir, require=("tile", "osm_type", "osm_id", "local"),
                     params={"min_side_m": min_side_m, "seed": seed}, workers=workers, scheduler=scheduler,
                     overwrite=overwrite, reporter=reporter)

"""``gjp visibility``: each entity's graph, with visibility edges between its parts.

Graph of an entity (from its ``local`` geometry):

* **parts**: every point, every line piece, every polygon ring (exterior and holes) of
  every member, in geometry order;
* **vertices**: the parts' coordinates; a ring's closing vertex is not repeated;
* **geometry edges**: consecutive vertices of a part, plus last → first for rings;
* **visibility edges** (PolygonGNN's heterogeneous visibility graph, for entities with at
  least two parts): vertex *a* is joined to the *k* nearest vertices *b* of *other* parts
  that it can see. *a* sees *b* when the segment *ab* meets no edge of the entity anywhere
  except within ``eps`` of *a* or *b* (so edges ending at *a* or *b* do not block, but
  crossing, touching or running along any edge does). Candidates are taken in order of
  distance, ties by vertex index; the result (undirected, each pair once, sorted) is
  deterministic. Open lines are not closed for this test: a line's wrap-around is not
  an obstacle.

The kernel runs over all entities of a file in one numba call.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from gjp.errors import GjpError
from gjp.geometry import wkb
from gjp.jit import njit
from gjp.stages import StageReport, add_columns, run_stage
from gjp.ui import QUIET, Reporter

DEFAULT_K = 1
#: Tolerance of the visibility test, in tile units (≈ 0.5 mm on a z16 tile).
DEFAULT_EPS = 1e-6
#: Tested candidates remembered per vertex, so that a pair is rarely tested twice.
_TRIED_KEPT = 8


# --------------------------------------------------------------------------- graph structure

def entity_graphs(geoms):
    """Vertices and geometry edges of every entity (a WKB column, or shapely geometries),
    as flat arrays with CSR offsets.

    Returns ``vertices [V,2]``, ``vertex_part [V]`` (part index within its entity),
    ``vertex_offsets [E+1]``, ``edges [M,2]`` (global vertex indices) and
    ``edge_offsets [E+1]``.
    """
    walked = wkb.walk(geoms)
    return _graphs(walked.coords, walked.part_offsets, walked.part_kind, walked.row_part_offsets)


@njit(nogil=True)
def _graphs(coords, part_offsets, part_kind, row_part_offsets):
    """:func:`entity_graphs` from a walk: a ring's repeated closing vertex is dropped;
    edges join consecutive vertices of a part, and close rings of ≥ 3 vertices (last →
    first), in entity, part and vertex order."""
    rows = len(row_part_offsets) - 1
    vertices = np.empty_like(coords)
    vertex_part = np.empty(len(coords), dtype=np.int32)
    vertex_offsets = np.zeros(rows + 1, dtype=np.int64)
    edges = np.empty((len(coords), 2), dtype=np.int64)  # ≤ one edge per vertex
    edge_offsets = np.zeros(rows + 1, dtype=np.int64)
    nv, ne = 0, 0
    for r in range(rows):
        for p in range(row_part_offsets[r], row_part_offsets[r + 1]):
            s, t = part_offsets[p], part_offsets[p + 1]
            ring = part_kind[p] == wkb.RING
            if ring and t - s > 1:
                t -= 1
            first = nv
            for c in range(s, t):
                vertices[nv, 0], vertices[nv, 1] = coords[c, 0], coords[c, 1]
                vertex_part[nv] = p - row_part_offsets[r]
                if c > s:
                    edges[ne, 0], edges[ne, 1] = nv - 1, nv
                    ne += 1
                nv += 1
            if ring and nv - first >= 3:
                edges[ne, 0], edges[ne, 1] = nv - 1, first
                ne += 1
        vertex_offsets[r + 1], edge_offsets[r + 1] = nv, ne
    return vertices[:nv].copy(), vertex_part[:nv].copy(), vertex_offsets, edges[:ne].copy(), edge_offsets


# --------------------------------------------------------------------------- the kernel

@njit(inline="always", error_model="numpy")
def _parallel(rx, ry, sx, sy, length):
    """Whether directions r (of length ``length``) and s are parallel: |r × s| ≤ 1e-12·|r|·|s|,
    compared squared."""
    cross = rx * sy - ry * sx
    return cross * cross <= 1e-24 * (length * length) * (sx * sx + sy * sy)


@njit(inline="always", error_model="numpy")
def _overlaps_along(ax, ay, rx, ry, cx, cy, dx, dy, length, eps):
    """For cd parallel to ab (= a + r): whether cd lies on ab's line and overlaps ab
    farther than eps from both a and b."""
    qx, qy = cx - ax, cy - ay
    if abs(qx * ry - qy * rx) > eps * length:
        return False
    l2 = length * length
    tc = (qx * rx + qy * ry) / l2
    td = ((dx - ax) * rx + (dy - ay) * ry) / l2
    lo = max(min(tc, td), eps / length)
    hi = min(max(tc, td), 1.0 - eps / length)
    return lo < hi


@njit(inline="always", error_model="numpy")
def _blocks(ax, ay, bx, by, cx, cy, dx, dy, length, eps):
    """Whether edge cd meets segment ab at a point farther than eps from both a and b."""
    rx, ry = bx - ax, by - ay
    # Fast reject: c and d clearly on the same side of ab's line (farther than eps, and
    # not so close to it that the exact test below could still see a meeting point).
    oc = rx * (cy - ay) - ry * (cx - ax)
    od = rx * (dy - ay) - ry * (dx - ax)
    if oc * od > 0.0:
        near, far = min(abs(oc), abs(od)), max(abs(oc), abs(od))
        if near > eps * length and near > 1e-9 * far:
            return False
    sx, sy = dx - cx, dy - cy
    if _parallel(rx, ry, sx, sy, length):
        return _overlaps_along(ax, ay, rx, ry, cx, cy, dx, dy, length, eps)
    qx, qy = cx - ax, cy - ay
    denom = rx * sy - ry * sx
    t = (qx * sy - qy * sx) / denom
    u = (qx * ry - qy * rx) / denom
    if t < 0.0 or t > 1.0 or u < -1e-12 or u > 1.0 + 1e-12:
        return False
    return t * length > eps and (1.0 - t) * length > eps


@njit(nogil=True, error_model="numpy")
def _sort_pairs(keys, m):
    """Sort ``keys[:m]`` in place (insertion sort: entities have few pairs)."""
    if m > 64:
        keys[:m] = np.sort(keys[:m])
        return
    for i in range(1, m):
        key = keys[i]
        j = i - 1
        while j >= 0 and keys[j] > key:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = key


@njit(nogil=True, error_model="numpy")
def visibility_kernel(vertices, vertex_part, vertex_offsets, edges, edge_offsets, k, eps):
    """Visibility edges of all entities: ``(pairs [P,2] global vertex indices, sorted and
    unique per entity; offsets [E+1])``.

    Per entity, its coordinates and edge bounding boxes are copied into flat scratch
    arrays; per vertex a, candidates come nearest first (a linear scan of the squared
    distances, ties by index); a candidate b is tested against the edges whose box meets
    ab's, gathered by a branch-free pass. Everything is in this one function on purpose:
    numba reference-counts the arrays passed to a helper on every call, which cost more
    than the test itself.
    """
    n = len(vertex_offsets) - 1
    total = len(vertices)
    keys = np.empty(max(total * k, 1), dtype=np.int64)  # pair (a, b), a < b, as a·total + b
    offsets = np.zeros(n + 1, dtype=np.int64)
    largest, largest_e = 1, 1
    for e in range(n):
        largest = max(largest, vertex_offsets[e + 1] - vertex_offsets[e])
        largest_e = max(largest_e, edge_offsets[e + 1] - edge_offsets[e])
    # scratch, entity-local: coordinates, distances from the current vertex, each
    # vertex's part range, edges (local vertex indices) and their bounding boxes
    xs, ys, dist = np.empty(largest), np.empty(largest), np.empty(largest)
    part_lo, part_hi = np.empty(largest, dtype=np.int64), np.empty(largest, dtype=np.int64)
    ec, ed = np.empty(largest_e, dtype=np.int64), np.empty(largest_e, dtype=np.int64)
    bx0, bx1, by0, by1 = np.empty(largest_e), np.empty(largest_e), np.empty(largest_e), np.empty(largest_e)
    near = np.empty(largest_e + 1, dtype=np.int64)
    # the first candidates each vertex tested, and the outcome: b looks a pair up there
    # instead of testing it again (the test is symmetric: always run from the lower index)
    tried_b = np.empty((largest, _TRIED_KEPT), dtype=np.int64)
    tried_ok = np.empty((largest, _TRIED_KEPT), dtype=np.bool_)
    ntried = np.zeros(largest, dtype=np.int64)
    filled = 0
    for e in range(n):
        v0, v1 = vertex_offsets[e], vertex_offsets[e + 1]
        nv = v1 - v0
        if nv < 2 or vertex_part[v1 - 1] == vertex_part[v0]:
            offsets[e + 1] = filled  # one part (parts are numbered in order)
            continue
        for j in range(nv):
            xs[j], ys[j] = vertices[v0 + j, 0], vertices[v0 + j, 1]
        lo = 0
        for j in range(1, nv + 1):
            if j == nv or vertex_part[v0 + j] != vertex_part[v0 + lo]:
                for i in range(lo, j):
                    part_lo[i], part_hi[i] = lo, j
                lo = j
        e0 = edge_offsets[e]
        ne = edge_offsets[e + 1] - e0
        for m in range(ne):
            c, d = edges[e0 + m, 0] - v0, edges[e0 + m, 1] - v0
            ec[m], ed[m] = c, d
            bx0[m], bx1[m] = min(xs[c], xs[d]), max(xs[c], xs[d])
            by0[m], by1[m] = min(ys[c], ys[d]), max(ys[c], ys[d])
        start = filled
        for a in range(nv):
            for j in range(nv):
                dx, dy = xs[j] - xs[a], ys[j] - ys[a]
                dist[j] = dx * dx + dy * dy
            for j in range(part_lo[a], part_hi[a]):
                dist[j] = np.inf  # own part
            found = 0
            ntried[a] = 0
            while found < k:
                b, best = -1, np.inf
                for j in range(nv):
                    if dist[j] < best:
                        b, best = j, dist[j]
                if b < 0:
                    break  # no vertex of another part left
                dist[b] = np.inf
                known = -1
                if b < a:
                    for q in range(ntried[b]):
                        if tried_b[b, q] == a:
                            known = 1 if tried_ok[b, q] else 0
                if known >= 0:
                    ok = known == 1  # and if visible, already recorded from b's side
                else:
                    # p sees q unless an edge meets pq farther than eps from both ends
                    p, q = min(a, b), max(a, b)
                    px, py, qx, qy = xs[p], ys[p], xs[q], ys[q]
                    rx, ry = qx - px, qy - py
                    length = math.sqrt(rx * rx + ry * ry)
                    ok = True
                    if length > 2.0 * eps:  # else no point of pq is far from both ends
                        minx, maxx = min(px, qx) - eps, max(px, qx) + eps
                        miny, maxy = min(py, qy) - eps, max(py, qy) + eps
                        hits = 0
                        for m in range(ne):
                            near[hits] = m
                            hits += (bx1[m] >= minx) & (bx0[m] <= maxx) & (by1[m] >= miny) & (by0[m] <= maxy)
                        for h in range(hits):
                            m = near[h]
                            c, d = ec[m], ed[m]
                            cx, cy, dx, dy = xs[c], ys[c], xs[d], ys[d]
                            if c == p or c == q or d == p or d == q:
                                # meets pq at an end (never blocking) unless it runs along pq
                                if (_parallel(rx, ry, dx - cx, dy - cy, length)
                                        and _overlaps_along(px, py, rx, ry, cx, cy, dx, dy, length, eps)):
                                    ok = False
                                    break
                            elif _blocks(px, py, qx, qy, cx, cy, dx, dy, length, eps):
                                ok = False
                                break
                    if ok:
                        keys[filled] = (v0 + p) * total + v0 + q
                        filled += 1
                t = ntried[a]
                if t < _TRIED_KEPT:
                    tried_b[a, t], tried_ok[a, t] = b, ok
                    ntried[a] = t + 1
                if ok:
                    found += 1
        # sort this entity's pairs and drop duplicates (a↔b found from both ends)
        m = filled - start
        _sort_pairs(keys[start:filled], m)
        w = 0
        for i in range(m):
            if i == 0 or keys[start + i] != keys[start + w - 1]:
                keys[start + w] = keys[start + i]
                w += 1
        filled = start + w
        offsets[e + 1] = filled
    pairs = np.empty((filled, 2), dtype=np.int64)
    for i in range(filled):
        pairs[i, 0] = keys[i] // total
        pairs[i, 1] = keys[i] % total
    return pairs, offsets


def visibility_edges(geoms, k: int = DEFAULT_K, eps: float = DEFAULT_EPS):
    """Graphs with visibility edges for local geometries (a WKB column, or shapely
    geometries; see the module doc).

    Returns ``(vertices, vertex_part, vertex_offsets, geometry_edges, edge_offsets,
    visibility_pairs, visibility_offsets)``; edge arrays hold global vertex indices.
    """
    vertices, vertex_part, voff, edges, eoff = entity_graphs(geoms)
    pairs, poff = visibility_kernel(vertices, vertex_part, voff, edges, eoff, k, eps)
    return vertices, vertex_part, voff, edges, eoff, pairs, poff


# --------------------------------------------------------------------------- the step

def _nested(values: np.ndarray, offsets: np.ndarray, width: int, dtype) -> pa.Array:
    """Rows of ``width``-wide items as list<fixed_size_list<dtype, width>>."""
    flat = pa.array(values.reshape(-1), type=dtype)
    items = pa.FixedSizeListArray.from_arrays(flat, width)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items)


def visibility_table(table: pa.Table, zoom: int, k: int = DEFAULT_K, eps: float = DEFAULT_EPS) -> pa.Table:
    vertices, vertex_part, voff, edges, eoff, pairs, poff = visibility_edges(table.column("local"), k, eps)
    # store edges with entity-local vertex indices
    n = table.num_rows
    entity_of_edge = np.repeat(np.arange(n), np.diff(eoff))
    local_edges = edges - voff[entity_of_edge][:, None]
    entity_of_pair = np.repeat(np.arange(n), np.diff(poff))
    local_pairs = pairs - voff[entity_of_pair][:, None]
    return add_columns(table, {
        "vertices": _nested(vertices, voff, 2, pa.float64()),
        "vertex_part": pa.ListArray.from_arrays(pa.array(voff, pa.int32()), pa.array(vertex_part, pa.int32())),
        "geometry_edges": _nested(local_edges.astype(np.int32), eoff, 2, pa.int32()),
        "visibility_edges": _nested(local_pairs.astype(np.int32), poff, 2, pa.int32()),
    })


def visibility(input_dir="boxed", output_dir="graphs", *, k: int = DEFAULT_K, eps: float = DEFAULT_EPS,
               workers: int = 1, scheduler: str | None = None, overwrite: bool = False,
               reporter: Reporter = QUIET) -> StageReport:
    """``gjp visibility``: add each entity's graph to every group file of ``input_dir`` (on
    ``workers`` threads, or on the Dask cluster at ``scheduler``)."""
    if k < 1:
        raise GjpError(f"--k must be at least 1, got {k}")
    # the min box comes first in the pipeline, so a graphs/ directory always has it
    return run_stage("visibility", visibility_table, input_dir, output_dir, require=("local", "min_box"),
                     params={"k": k, "eps": eps}, workers=workers, scheduler=scheduler, overwrite=overwrite,
                     reporter=reporter)

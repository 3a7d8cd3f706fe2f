"""A deliberately naive, pure-Python statement of the visibility-edge rule of
``gjp.geometry.visibility`` (DESIGN §1), used as the reference the numba kernel must match.

Literally the definition, in two stages (as PolygonGNN describes its visibility graph):
first the full visibility graph (every pair of vertices of different parts, tested against
every edge of the entity: O(V²·E)), then, for every vertex, its k nearest visible partners
by (squared distance, index). a sees b when no edge (c, d) of the entity meets the segment
ab at a point farther than eps from both a and b.

The kernel searches nearest-first and stops early; sharing none of that structure makes
this an independent check. ``nearest_first_visibility_edges`` is the same search as the
kernel in plain Python, for the benchmark's second comparison.
"""

from __future__ import annotations

import math


def meets_away_from_ends(a, b, c, d, eps):
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = a, b, c, d
    rx, ry = bx - ax, by - ay
    sx, sy = dx - cx, dy - cy
    length = math.sqrt(rx * rx + ry * ry)
    cross = rx * sy - ry * sx
    if cross * cross > 1e-24 * (length * length) * (sx * sx + sy * sy):  # not parallel
        # the lines cross at a + t·r = c + u·s
        t = ((cx - ax) * sy - (cy - ay) * sx) / cross
        u = ((cx - ax) * ry - (cy - ay) * rx) / cross
        if not (0.0 <= t <= 1.0 and -1e-12 <= u <= 1.0 + 1e-12):
            return False
        return t * length > eps and (1.0 - t) * length > eps
    # parallel: only a collinear overlap can block
    if abs((cx - ax) * ry - (cy - ay) * rx) > eps * length:
        return False
    tc = ((cx - ax) * rx + (cy - ay) * ry) / (length * length)
    td = ((dx - ax) * rx + (dy - ay) * ry) / (length * length)
    lo = max(min(tc, td), eps / length)
    hi = min(max(tc, td), 1.0 - eps / length)
    return lo < hi


def sees(vertices, edges, a, b, eps):
    pa, pb = vertices[a], vertices[b]
    rx, ry = pb[0] - pa[0], pb[1] - pa[1]
    if math.sqrt(rx * rx + ry * ry) <= 2 * eps:
        return True
    return not any(meets_away_from_ends(pa, pb, vertices[c], vertices[d], eps) for c, d in edges)


def _distance2(vertices, a, b):
    return (vertices[b][0] - vertices[a][0]) ** 2 + (vertices[b][1] - vertices[a][1]) ** 2


def naive_visibility_edges(vertices, parts, edges, k=1, eps=1e-6):
    """Sorted list of (i, j), i < j: the visibility edges of one entity."""
    vertices = [tuple(map(float, v)) for v in vertices]
    parts = list(parts)
    edges = [tuple(e) for e in edges]
    n = len(vertices)
    if len(set(parts)) < 2:
        return []
    visible = {a: [] for a in range(n)}
    for a in range(n):
        for b in range(a + 1, n):
            if parts[a] != parts[b] and sees(vertices, edges, a, b, eps):
                visible[a].append(b)
                visible[b].append(a)
    found = set()
    for a in range(n):
        for b in sorted(visible[a], key=lambda b: (_distance2(vertices, a, b), b))[:k]:
            found.add((min(a, b), max(a, b)))
    return sorted(found)


def nearest_first_visibility_edges(vertices, parts, edges, k=1, eps=1e-6):
    """The same edges, searched like the kernel: candidates nearest first, stop at k."""
    vertices = [tuple(map(float, v)) for v in vertices]
    parts = list(parts)
    edges = [tuple(e) for e in edges]
    if len(set(parts)) < 2:
        return []
    found = set()
    for a in range(len(vertices)):
        candidates = sorted((_distance2(vertices, a, b), b) for b in range(len(vertices)) if parts[b] != parts[a])
        kept = 0
        for _, b in candidates:
            if kept == k:
                break
            if sees(vertices, edges, a, b, eps):
                found.add((min(a, b), max(a, b)))
                kept += 1
    return sorted(found)

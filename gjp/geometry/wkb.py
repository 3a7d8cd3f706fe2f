"""Reading the coordinates and structure of a WKB column without building geometries.

The per-file steps need either all coordinates of each row (``bbox``), the parts of each
row in geometry order (``visibility``), or the coordinates to rewrite in place
(``simplify``). Decoding into GEOS objects and taking them apart again cost more than
the steps' own work on files of a few hundred rows, so a numba walker reads the bytes of
the Arrow binary column directly.

Accepted: ISO WKB and EWKB (what shapely, GDAL and PostGIS write), either byte order,
types 1–7, with Z/M ordinates (read past) and an SRID (skipped). A part is a point, a line
(LineString) or a ring (one ring of a polygon), in the order the geometry lists them —
the order of ``shapely.get_parts`` / ``get_rings``. An empty point (NaN coordinates) is a
part with no coordinates, as in shapely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import shapely

from gjp.errors import GjpError
from gjp.jit import njit

#: Part kinds.
POINT, LINE, RING = 0, 1, 2
#: WKB type codes of the single geometries.
WKB_POINT, WKB_LINESTRING, WKB_POLYGON = 1, 2, 3
#: OGC geometry type names by WKB type code.
TYPE_NAMES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
              6: "MultiPolygon", 7: "GeometryCollection"}
_MAX_DEPTH = 32


@dataclass
class Walk:
    """The parts of a WKB column: coordinates ``coords [C,2]`` with the byte offset of
    each x (``coord_pos``) and its byte order (``coord_big``); per part its coordinates
    ``coords[part_offsets[p]:part_offsets[p+1]]``, its kind (POINT/LINE/RING) and row;
    per row its parts ``row_part_offsets`` and its WKB type code (1–7, flags removed)."""

    coords: np.ndarray
    coord_pos: np.ndarray
    coord_big: np.ndarray
    part_offsets: np.ndarray
    part_kind: np.ndarray
    part_row: np.ndarray
    row_part_offsets: np.ndarray
    row_type: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.row_type)

    def row_coord_offsets(self) -> np.ndarray:
        """Row r's coordinates are ``coords[o[r]:o[r+1]]``."""
        return self.part_offsets[self.row_part_offsets]

    def row_of_coord(self) -> np.ndarray:
        return np.repeat(np.arange(self.rows), np.diff(self.row_coord_offsets()))


def binary_buffers(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes and row offsets (int64, starting at 0) of a binary column, zero-copy
    where Arrow allows. Nulls are refused: every row of a tile file has a geometry."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        raise GjpError("a geometry column holds nulls")
    if pa.types.is_large_binary(column.type):
        offset_type = np.int64
    elif pa.types.is_binary(column.type):
        offset_type = np.int32
    else:
        raise GjpError(f"a geometry column has type {column.type}, not WKB binary")
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[column.offset:column.offset + len(column) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    # always read-only, whether Arrow's buffer was mutable or not: numba compiles (and
    # install warms) one specialisation per flag, so the kernels see only this one
    data = data.view()
    data.flags.writeable = False
    return data, offsets


def as_wkb(geoms: pa.Array | pa.ChunkedArray | np.ndarray) -> pa.Array | pa.ChunkedArray:
    """A WKB column as it is, or shapely geometries as one."""
    if isinstance(geoms, (pa.Array, pa.ChunkedArray)):
        return geoms
    return pa.array(shapely.to_wkb(np.asarray(geoms, dtype=object)), pa.binary())


def walk(column: pa.Array | pa.ChunkedArray | np.ndarray) -> Walk:
    """Walk every geometry of a WKB column, or of shapely geometries (see the module doc)."""
    data, offsets = binary_buffers(as_wkb(column))
    try:
        return Walk(*_walk(data, offsets))
    except ValueError as err:
        raise GjpError(f"a geometry is not valid WKB ({err})") from None


#: ``structure_flags`` bits.
NOT_PLAIN, HAS_EMPTY, HAS_SINGLETON_MULTI = 1, 2, 4


def structure_flags(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row of a binary column's buffers (:func:`binary_buffers`), a bit mask:
    ``NOT_PLAIN`` (some header is not little-endian 2D ISO: big-endian, Z/M or SRID; the
    rest is then not looked at), ``HAS_EMPTY`` (an empty geometry at any depth),
    ``HAS_SINGLETON_MULTI`` (a MultiPoint/MultiLineString/MultiPolygon of one member at
    any depth). Rows are assumed to be valid WKB (walk them first)."""
    return _structure_flags(data, offsets)


def with_coords(column: pa.Array | pa.ChunkedArray, walked: Walk, coords: np.ndarray) -> pa.Array:
    """A copy of a WKB column with the coordinates of ``walked`` replaced by ``coords``
    (same order; empty points untouched): the structure and byte order are kept."""
    data, offsets = binary_buffers(column)
    out = data.copy()
    _put_coords(out, walked.coord_pos, walked.coord_big, np.ascontiguousarray(coords, dtype=np.float64))
    return binary_array(out, offsets)


def binary_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """The inverse of :func:`binary_buffers`: row r is ``data[offsets[r]:offsets[r+1]]``;
    binary, or large_binary past 2 GiB."""
    start, end = offsets[0], offsets[-1]
    rebased = (offsets - start).astype(np.int32 if end - start < 2**31 else np.int64)
    kind = pa.binary() if rebased.dtype == np.int32 else pa.large_binary()
    return pa.Array.from_buffers(kind, len(offsets) - 1, [None, pa.py_buffer(rebased), pa.py_buffer(data[start:end])])


# --------------------------------------------------------------------------- kernels

@njit(inline="always")
def _u32(data, pos, big):
    if big:
        return (np.uint32(data[pos]) << 24) | (np.uint32(data[pos + 1]) << 16) | (np.uint32(data[pos + 2]) << 8) | np.uint32(data[pos + 3])
    return (np.uint32(data[pos + 3]) << 24) | (np.uint32(data[pos + 2]) << 16) | (np.uint32(data[pos + 1]) << 8) | np.uint32(data[pos])


@njit(inline="always")
def _f64(data, pos, big, bits, value):
    b = np.uint64(0)
    for i in range(8):
        b = (b << np.uint64(8)) | np.uint64(data[pos + i if big else pos + 7 - i])
    bits[0] = b
    return value[0]


@njit(inline="always")
def _header(data, pos, end):
    """``(big, base type 1–7, ordinates per coordinate, position after the header)``."""
    if pos + 5 > end:
        raise ValueError("truncated")
    order = data[pos]
    if order > 1:
        raise ValueError("bad byte order")
    big = order == 0
    code = _u32(data, pos + 1, big)
    pos += 5
    ndim = 2
    if code & np.uint32(0x20000000):  # EWKB SRID
        pos += 4
    if code & np.uint32(0x80000000):
        ndim += 1
    if code & np.uint32(0x40000000):
        ndim += 1
    code &= np.uint32(0x0FFFFFFF)
    iso = code // np.uint32(1000)
    base = code % np.uint32(1000)
    if iso == 1 or iso == 2:
        ndim += 1
    elif iso == 3:
        ndim += 2
    elif iso != 0:
        raise ValueError("unknown geometry type")
    if base < 1 or base > 7:
        raise ValueError("unknown geometry type")
    return big, np.int64(base), ndim, pos


@njit(inline="always")
def _close_collections(remaining, depth):
    """A geometry is complete: so is every open collection whose last member it was.
    Returns the new nesting depth (0: the row is done)."""
    while depth > 0:
        remaining[depth - 1] -= 1
        if remaining[depth - 1] > 0:
            break
        depth -= 1
    return depth


@njit(nogil=True)
def _walk(data, offsets):
    n = len(offsets) - 1
    nbytes = offsets[n] - offsets[0]
    # every coordinate takes ≥ 16 bytes and every part ≥ 4
    coords = np.empty((nbytes // 16 + 1, 2))
    coord_pos = np.empty(nbytes // 16 + 1, dtype=np.int64)
    coord_big = np.empty(nbytes // 16 + 1, dtype=np.bool_)
    part_offsets = np.zeros(nbytes // 4 + 2, dtype=np.int64)
    part_kind = np.empty(nbytes // 4 + 1, dtype=np.int8)
    part_row = np.empty(nbytes // 4 + 1, dtype=np.int64)
    row_part_offsets = np.zeros(n + 1, dtype=np.int64)
    row_type = np.empty(n, dtype=np.int64)
    bits = np.empty(1, dtype=np.uint64)
    value = bits.view(np.float64)
    remaining = np.empty(_MAX_DEPTH, dtype=np.int64)  # children left per open collection
    nc, npart = 0, 0
    for r in range(n):
        pos, end = offsets[r], offsets[r + 1]
        depth = 0
        first = True
        while True:
            big, base, ndim, pos = _header(data, pos, end)
            if first:
                row_type[r] = base
                first = False
            if base >= 4:
                if pos + 4 > end:
                    raise ValueError("truncated")
                count = np.int64(_u32(data, pos, big))
                pos += 4
                if count > 0:
                    if depth == _MAX_DEPTH:
                        raise ValueError("collections nested too deep")
                    remaining[depth] = count
                    depth += 1
                    continue  # its first member follows
            else:
                rings = 1
                if base == 3:
                    if pos + 4 > end:
                        raise ValueError("truncated")
                    rings = np.int64(_u32(data, pos, big))
                    pos += 4
                for _ in range(rings):
                    if base == 1:
                        count = 1
                    else:
                        if pos + 4 > end:
                            raise ValueError("truncated")
                        count = np.int64(_u32(data, pos, big))
                        pos += 4
                    if pos + count * ndim * 8 > end:
                        raise ValueError("truncated")
                    part_kind[npart] = POINT if base == 1 else (LINE if base == 2 else RING)
                    part_row[npart] = r
                    for _ in range(count):
                        x = _f64(data, pos, big, bits, value)
                        y = _f64(data, pos + 8, big, bits, value)
                        if not (base == 1 and np.isnan(x) and np.isnan(y)):  # empty point
                            coords[nc, 0], coords[nc, 1] = x, y
                            coord_pos[nc], coord_big[nc] = pos, big
                            nc += 1
                        pos += ndim * 8
                    npart += 1
                    part_offsets[npart] = nc
            depth = _close_collections(remaining, depth)
            if depth == 0:
                break
        row_part_offsets[r + 1] = npart
    return (coords[:nc].copy(), coord_pos[:nc].copy(), coord_big[:nc].copy(), part_offsets[:npart + 1].copy(),
            part_kind[:npart].copy(), part_row[:npart].copy(), row_part_offsets, row_type)


@njit(nogil=True)
def _put_coords(data, coord_pos, coord_big, coords):
    bits = np.empty(1, dtype=np.uint64)
    value = bits.view(np.float64)
    for i in range(len(coord_pos)):
        for k in range(2):
            value[0] = coords[i, k]
            b = bits[0]
            pos = coord_pos[i] + 8 * k
            for j in range(8):
                byte = np.uint8((b >> np.uint64(8 * j)) & np.uint64(0xFF))
                if coord_big[i]:
                    data[pos + 7 - j] = byte
                else:
                    data[pos + j] = byte


@njit(nogil=True)
def _structure_flags(data, offsets):
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.int64)
    remaining = np.empty(_MAX_DEPTH, dtype=np.int64)
    for r in range(n):
        pos, depth, flags = offsets[r], 0, 0
        while True:
            code = _u32(data, pos + 1, False)
            if data[pos] != 1 or code < 1 or code > 7:
                flags |= NOT_PLAIN
                break
            pos += 5
            count = np.int64(_u32(data, pos, False))
            if code == 1:
                # an empty point is NaN, NaN: a NaN x has all exponent bits set and a
                # mantissa ≠ 0 (bytes 6 and 7 of a little-endian double)
                if (data[pos + 7] & 0x7F) == 0x7F and (data[pos + 6] & 0xF0) == 0xF0:
                    flags |= HAS_EMPTY
                pos += 16
            elif code == 2:
                pos += 4 + 16 * count
                if count == 0:
                    flags |= HAS_EMPTY
            elif code == 3:
                pos += 4
                if count == 0:
                    flags |= HAS_EMPTY
                for _ in range(count):
                    points = np.int64(_u32(data, pos, False))
                    pos += 4 + 16 * points
            else:
                pos += 4
                if count == 0:
                    flags |= HAS_EMPTY
                else:
                    if count == 1 and code != 7:
                        flags |= HAS_SINGLETON_MULTI
                    remaining[depth] = count
                    depth += 1
                    continue
            depth = _close_collections(remaining, depth)
            if depth == 0:
                break
        out[r] = flags
    return out

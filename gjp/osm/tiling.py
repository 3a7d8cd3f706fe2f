"""``gjp tile`` for OSM inputs: entities → every z16 tile they intersect → group files.

An entity goes to every tile its geometry intersects (not only the tiles holding its
vertices) and is clipped to each in fractional tile coordinates, where tile borders are
straight lines (:mod:`gjp.grid`). Geometries spanning several tiles are split recursively
(halving the tile range and clipping to each half), so cost grows with the number of
pieces, not with the size of the bounding range. Clipped pieces stay separate parts and
polygons keep their holes. Pieces that only touch a tile (a shared border, a corner) are
not assigned to it.

Rows are spilled to a few bucket files by group while reading (so memory stays bounded on
country-sized inputs), then each bucket is sorted, de-duplicated across inputs, filtered by
entity count per tile, and written as one GeoParquet file per group.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from gjp import grid
from gjp.errors import GjpError
from gjp.geoparquet import BASE_SCHEMA, BBOX_FIELDS, FORMAT, FORMAT_VERSION, write_group_file
from gjp.io import atomic_directory, provenance
from gjp.kinds import COLLECTION, KINDS, OSM_TYPES
from gjp.osm.reader import NODE_INDEX_TYPES, Entities, ReadReport, read_osm
from gjp.parallel import executor
from gjp.sniff import OSM_FORMATS, sniff
from gjp.tagfilter import TagFilter
from gjp.ui import QUIET, Reporter

#: Rows of the spill files: tile position, where the row came from, and the entity.
_SPILL_SCHEMA = pa.schema([
    ("tile_x", pa.int32()), ("tile_y", pa.int32()), ("source", pa.int32()),
    ("osm_type", pa.uint8()), ("osm_id", pa.int64()), ("kind", pa.uint8()),
    ("tags", pa.map_(pa.string(), pa.string())), ("geometry", pa.binary()),
    *((name, pa.float64()) for name in BBOX_FIELDS),
])
_SPILL_BYTES_PER_BUCKET = 32 * 2**20
#: Entities read and tiled at a time (bounds memory together with the spill buckets).
_CHUNK_SIZE = 200_000
#: Entities spanning at most this many tiles are clipped in one vectorised pass.
_SMALL_RANGE = 16


@dataclass
class TileReport:
    read: ReadReport = field(default_factory=ReadReport)
    rows: int = 0                 # (entity, tile) rows before the per-tile filter
    tiles_kept: int = 0
    tiles_too_few: int = 0
    tiles_too_many: int = 0
    duplicates: int = 0           # the same entity in the same tile from several inputs
    rows_written: int = 0
    groups_written: int = 0

    def summary(self) -> str:
        r = self.read
        lines = [
            f"entities: {r.points} points, {r.lines} lines, {r.polygons} polygons, "
            f"{r.multipolygons} multipolygons, {r.relations} other relations",
            f"tiles: {self.tiles_kept} kept in {self.groups_written} group files "
            f"({self.rows_written} rows); dropped {self.tiles_too_few} with too few and "
            f"{self.tiles_too_many} with too many entities",
        ]
        fixes = [
            (r.ways_repaired, "ways with missing nodes kept as their known parts"),
            (r.ways_skipped, "ways with missing nodes skipped (areas, or < 2 known points)"),
            (r.polygons_made_valid, "invalid polygons repaired"),
            (r.area_relations_skipped, "multipolygon/boundary relations skipped (incomplete or not assemblable)"),
            (r.relations_repaired, "relations kept with some members missing"),
            (r.relations_skipped, "relations skipped (no member in the file)"),
            (self.duplicates, "duplicate rows from overlapping inputs dropped"),
        ]
        lines += [f"  {n} {what}" for n, what in fixes if n]
        return "\n".join(lines)


def check_osm_inputs(inputs: list[Path]) -> list[tuple[Path, str]]:
    """Each input with its pyosmium format; a clear error for anything else."""
    checked = []
    for path in inputs:
        kind = sniff(path)
        if kind not in OSM_FORMATS:
            what = "a raster (GeoTIFF)" if kind == "tiff" else "not an OSM file (.osm.pbf, .osm, .osm.bz2)"
            raise GjpError(f"{path}: {what}")
        checked.append((Path(path), OSM_FORMATS[kind]))
    return checked


def check_node_index(node_index: str) -> None:
    """pyosmium's index spec: a known type, and for the file-backed ones a file that can be
    created (pyosmium would report a bad path as an unreadable input)."""
    kind, _, file = node_index.partition(",")
    if kind not in NODE_INDEX_TYPES:
        raise GjpError(f"--node-index {node_index!r}: choose one of {', '.join(NODE_INDEX_TYPES)}")
    if file:
        folder = Path(file).parent
        if not folder.is_dir():
            raise GjpError(f"--node-index {node_index!r}: {folder}: no such directory for the index file")
        if not os.access(folder, os.W_OK):
            raise GjpError(f"--node-index {node_index!r}: {folder}: not writable")


def tile_osm(inputs: list[str | Path], output_dir: str | Path, *, zoom: int = grid.DEFAULT_ZOOM,
             tag_filter: TagFilter | None = None, min_entities: int = 5, max_entities: int = 1250,
             node_index: str = "flex_mem", workers: int = 1, scheduler: str | None = None,
             overwrite: bool = False, reporter: Reporter = QUIET) -> TileReport:
    """Tile OSM files into ``output_dir/14_X_Y.parquet`` group files (see module doc).

    The inputs are read here, one after the other; the buckets are finished on ``workers``
    threads, or on the Dask cluster at ``scheduler`` (which must then see the output's
    directory under the same path: the spill files are staged beside the output)."""
    if not 2 <= zoom <= 24:
        raise GjpError(f"--zoom must be between 2 and 24, got {zoom}")
    check_node_index(node_index)
    if min_entities > max_entities:
        raise GjpError(f"--min-entities {min_entities} is larger than --max-entities {max_entities}")
    tag_filter = tag_filter or TagFilter()
    checked = check_osm_inputs([Path(p) for p in inputs])
    total_bytes = sum(p.stat().st_size for p, _ in checked)
    n_buckets = int(min(256, max(1, total_bytes // _SPILL_BYTES_PER_BUCKET)))
    report = TileReport()
    params = {"zoom": zoom, "min_entities": min_entities, "max_entities": max_entities,
              "tag_filter": tag_filter.describe(), "inputs": [str(p) for p, _ in checked]}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "zoom": zoom,
            "steps": [provenance("tile", params)]}

    with executor(workers, scheduler) as pool, atomic_directory(output_dir, overwrite) as staging:
        spill_dir = staging / ".spill"
        spill_dir.mkdir()
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for source, (path, fmt) in enumerate(checked):
                try:
                    chunks = read_osm(path, tag_filter, file_format=fmt, node_index=node_index,
                                      chunk_size=_CHUNK_SIZE, report=report.read, reporter=reporter)
                    for entities in chunks:
                        rows = assign_tiles(entities, zoom, source)
                        report.rows += rows.num_rows
                        _spill(rows, n_buckets, spill_dir, writers)
                except RuntimeError as err:
                    raise GjpError(f"{path}: corrupt or truncated OSM file ({err})") from err
        finally:
            for w in writers.values():
                w.close()
        buckets = sorted(writers)
        jobs = [(pool.path(spill_dir / f"{b}.parquet"), pool.path(staging), zoom, min_entities, max_entities,
                 meta) for b in buckets]
        bar = reporter.progress(total=len(jobs), desc="writing groups", unit=" bucket")
        results = list(pool.map(_finish_bucket, jobs, bar))
        bar.close()
        for counts in results:
            for key, value in counts.items():
                setattr(report, key, getattr(report, key) + value)
        for f in spill_dir.iterdir():
            f.unlink()
        spill_dir.rmdir()
        if report.groups_written == 0:
            raise GjpError(
                f"{', '.join(str(p) for p, _ in checked)}: no tile has between {min_entities} and "
                f"{max_entities} entities; nothing to write (see --min-entities)")
    return report


# --------------------------------------------------------------------------- tile assignment

def _to_fractional(zoom):
    def fn(coords):
        fx, fy = grid.lonlat_to_fractional(coords[:, 0], coords[:, 1], zoom)
        return np.column_stack([fx, fy])
    return fn


def _to_lonlat(zoom):
    def fn(coords):
        lon, lat = grid.fractional_to_lonlat(coords[:, 0], coords[:, 1], zoom)
        return np.column_stack([lon, lat])
    return fn


def assign_tiles(entities: Entities, zoom: int, source: int = 0) -> pa.Table:
    """One row per (entity, intersecting tile), geometry clipped to the tile (lon/lat WKB)."""
    n_tiles = 2**zoom
    merc = shapely.transform(entities.geometry, _to_fractional(zoom))
    bounds = shapely.bounds(merc)
    lo = np.clip(np.floor(bounds[:, :2]), 0, n_tiles - 1).astype(np.int64)
    hi = np.clip(np.floor(bounds[:, 2:]), 0, n_tiles - 1).astype(np.int64)
    single = (lo[:, 0] == hi[:, 0]) & (lo[:, 1] == hi[:, 1]) & (entities.kind != COLLECTION)

    entity_idx: list[np.ndarray] = [np.flatnonzero(single)]
    tile_xy: list[np.ndarray] = [lo[single]]
    out_geoms: list[np.ndarray] = [entities.geometry[single]]

    # Entities over a few tiles (buildings on a border, short roads: nearly all) are clipped
    # to every tile of their range in one vectorised call; larger ones split recursively.
    n_range = (hi[:, 0] - lo[:, 0] + 1) * (hi[:, 1] - lo[:, 1] + 1)
    small = ~single & (n_range <= _SMALL_RANGE) & (entities.kind != COLLECTION)
    pieces_idx, pieces_xy, pieces = _clip_small_ranges(merc, np.flatnonzero(small), lo, hi)
    split_idx, split_xy, split_geoms = [pieces_idx], [pieces_xy], [pieces]
    # Large ranges: halve the range until the pieces span few tiles, then clip those in
    # one vectorised pass too.
    pending, pending_owner = [], []
    for i in np.flatnonzero(~single & ~small):
        found = []
        if entities.kind[i] == COLLECTION:
            found = _split_collection(merc[i], n_tiles)
        else:
            start = len(pending)
            _split(merc[i], shapely.get_dimensions(merc[i]), lo[i, 0], hi[i, 0], lo[i, 1], hi[i, 1], found, pending)
            pending_owner.extend([i] * (len(pending) - start))
        if found:
            split_idx.append(np.full(len(found), i))
            split_xy.append(np.array([(x, y) for x, y, _ in found], dtype=np.int64).reshape(-1, 2))
            split_geoms.append(np.array([g for _, _, g in found], dtype=object))
    if pending:
        geoms = np.array([g for g, _, _ in pending], dtype=object)
        plo = np.array([p[1] for p in pending], dtype=np.int64).reshape(-1, 2)
        phi = np.array([p[2] for p in pending], dtype=np.int64).reshape(-1, 2)
        which, xy, clipped = _clip_small_ranges(geoms, np.arange(len(pending)), plo, phi)
        split_idx.append(np.asarray(pending_owner, dtype=np.int64)[which])
        split_xy.append(xy)
        split_geoms.append(clipped)
    split_idx, split_xy = np.concatenate(split_idx), np.concatenate(split_xy).reshape(-1, 2)
    split_geoms = np.concatenate(split_geoms)
    if len(split_idx):
        entity_idx.append(split_idx.astype(np.int64))
        tile_xy.append(split_xy.astype(np.int64))
        out_geoms.append(shapely.transform(split_geoms, _to_lonlat(zoom)))

    idx = np.concatenate(entity_idx)
    xy = np.concatenate(tile_xy).reshape(-1, 2)
    geoms = np.concatenate(out_geoms)
    bounds = shapely.bounds(geoms)
    tags = pa.array([entities.tags[i] for i in idx], type=pa.map_(pa.string(), pa.string()))
    return pa.table({
        "tile_x": pa.array(xy[:, 0], pa.int32()), "tile_y": pa.array(xy[:, 1], pa.int32()),
        "source": pa.array(np.full(len(idx), source), pa.int32()),
        "osm_type": pa.array(entities.osm_type[idx], pa.uint8()),
        "osm_id": pa.array(entities.osm_id[idx], pa.int64()),
        "kind": pa.array(entities.kind[idx], pa.uint8()),
        "tags": tags, "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
        **{name: pa.array(bounds[:, i], pa.float64()) for i, name in enumerate(BBOX_FIELDS)},
    }, schema=_SPILL_SCHEMA)


def _clip_small_ranges(merc: np.ndarray, which: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Clip each entity in ``which`` to every tile of its (small) range at once: each copy
    is shifted so its candidate tile is the unit square, clipped, and shifted back."""
    nx = hi[which, 0] - lo[which, 0] + 1
    n = nx * (hi[which, 1] - lo[which, 1] + 1)
    owner = np.repeat(which, n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    step = np.repeat(nx, n)
    xy = np.column_stack([lo[owner, 0] + k % step, lo[owner, 1] + k // step])
    copies = merc[owner]
    coords, index = shapely.get_coordinates(copies, return_index=True)
    shapely.set_coordinates(copies, coords - xy[index])
    clipped = _keep_dimensions(shapely.clip_by_rect(copies, 0.0, 0.0, 1.0, 1.0), shapely.get_dimensions(copies))
    hit = ~shapely.is_missing(clipped)
    clipped, xy, owner = clipped[hit], xy[hit], owner[hit]
    coords, index = shapely.get_coordinates(clipped, return_index=True)
    shapely.set_coordinates(clipped, coords + xy[index])
    return owner, xy, clipped


def _keep_dimensions(clipped: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_keep_dimension`: ``None`` where nothing of the dimension is left."""
    parts, owner = shapely.get_parts(clipped, return_index=True)
    types, d = shapely.get_type_id(parts), dims[owner]
    keep = (((d == 2) & (types == 3)) | ((d == 1) & (types == 1)))
    keep[keep] &= np.where(d[keep] == 2, shapely.area(parts[keep]), shapely.length(parts[keep])) > 0
    parts, owner = parts[keep], owner[keep]
    out = np.full(len(clipped), None, dtype=object)
    counts = np.bincount(owner, minlength=len(clipped))
    one = counts[owner] == 1
    out[owner[one]] = parts[one]
    for dim, make in ((2, shapely.multipolygons), (1, shapely.multilinestrings)):
        many = ~one & (dims[owner] == dim)
        if many.any():
            targets, dense = np.unique(owner[many], return_inverse=True)
            out[targets] = make(parts[many], indices=dense)
    return out


def _split(geom, dim: int, x0: int, x1: int, y0: int, y1: int, out: list, pending: list | None = None) -> None:
    """Append ``(x, y, piece)`` to ``out`` for every tile in the range that ``geom`` really
    enters. With ``pending``, stop at ranges of at most ``_SMALL_RANGE`` tiles and append
    ``(piece, (x0, y0), (x1, y1))`` there instead, for :func:`_clip_small_ranges`."""
    if pending is not None and (x1 - x0 + 1) * (y1 - y0 + 1) <= _SMALL_RANGE:
        pending.append((geom, (x0, y0), (x1, y1)))
        return
    if x0 == x1 and y0 == y1:
        out.append((int(x0), int(y0), geom))
        return
    if x1 - x0 >= y1 - y0:
        xm = (x0 + x1) // 2
        halves = ((x0, xm, y0, y1), (xm + 1, x1, y0, y1))
    else:
        ym = (y0 + y1) // 2
        halves = ((x0, x1, y0, ym), (x0, x1, ym + 1, y1))
    for a, b, c, d in halves:
        part = _keep_dimension(shapely.clip_by_rect(geom, a, c, b + 1, d + 1), dim)
        if part is None:
            continue
        minx, miny, maxx, maxy = part.bounds
        # Tighten the range to the piece; a piece ending exactly on a border does not
        # enter the next tile, which the clip there will confirm.
        a2, b2 = max(a, math.floor(minx)), min(b, math.floor(maxx))
        c2, d2 = max(c, math.floor(miny)), min(d, math.floor(maxy))
        _split(part, dim, a2, b2, c2, d2, out, pending)


def _keep_dimension(geom, dim: int):
    """Drop what clipping degenerates: points and lines from polygons, points from lines."""
    if geom.is_empty:
        return None
    parts = shapely.get_parts(geom)
    if dim == 2:
        parts = parts[(shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)]
        if len(parts) == 0:
            return None
        return parts[0] if len(parts) == 1 else shapely.MultiPolygon(list(parts))
    if dim == 1:
        parts = parts[(shapely.get_type_id(parts) == 1) & (shapely.length(parts) > 0)]
        if len(parts) == 0:
            return None
        return parts[0] if len(parts) == 1 else shapely.MultiLineString(list(parts))
    return geom


def _split_collection(collection, n_tiles: int) -> list:
    """Split each member of a relation's collection on its own, then regroup per tile
    (members keep their order, and stay separate parts)."""
    per_tile: dict[tuple[int, int], list] = {}
    for member in shapely.get_parts(collection):
        dim = shapely.get_dimensions(member)
        minx, miny, maxx, maxy = member.bounds
        x0, x1 = (min(n_tiles - 1, max(0, math.floor(v))) for v in (minx, maxx))
        y0, y1 = (min(n_tiles - 1, max(0, math.floor(v))) for v in (miny, maxy))
        pieces = []
        _split(member, dim, x0, x1, y0, y1, pieces)
        for x, y, piece in pieces:
            per_tile.setdefault((x, y), []).append(piece)
    return [(x, y, shapely.GeometryCollection(parts)) for (x, y), parts in per_tile.items()]


# --------------------------------------------------------------------------- spill and finish

def _bucket_of(tile_x: np.ndarray, tile_y: np.ndarray, n_buckets: int) -> np.ndarray:
    gx = (tile_x >> grid.GROUP_LEVELS).astype(np.int64)
    gy = (tile_y >> grid.GROUP_LEVELS).astype(np.int64)
    return ((gx * 73856093) ^ (gy * 19349663)) % n_buckets


def _spill(rows: pa.Table, n_buckets: int, spill_dir: Path, writers: dict) -> None:
    bucket = _bucket_of(rows.column("tile_x").to_numpy(), rows.column("tile_y").to_numpy(), n_buckets)
    for b in np.unique(bucket):
        part = rows.filter(pa.array(bucket == b))
        writer = writers.get(int(b))
        if writer is None:
            writer = writers[int(b)] = pq.ParquetWriter(spill_dir / f"{int(b)}.parquet", _SPILL_SCHEMA,
                                                        compression="lz4")
        writer.write_table(part)


def _finish_bucket(job) -> dict[str, int]:
    """Sort, de-duplicate, filter by entity count, and write the groups of one bucket."""
    path, out_dir, zoom, min_entities, max_entities, meta = job
    t = pq.ParquetFile(path).read()
    tx = t.column("tile_x").to_numpy().astype(np.int64)
    ty = t.column("tile_y").to_numpy().astype(np.int64)
    otype = t.column("osm_type").to_numpy()
    oid = t.column("osm_id").to_numpy()
    source = t.column("source").to_numpy()
    gx, gy = tx >> grid.GROUP_LEVELS, ty >> grid.GROUP_LEVELS
    order = np.lexsort((source, oid, otype, tx, ty, gx, gy))
    tx, ty, otype, oid, gx, gy = (a[order] for a in (tx, ty, otype, oid, gx, gy))
    # the same entity in the same tile from two overlapping inputs: keep the first input's
    same = np.zeros(len(order), dtype=bool)
    same[1:] = (tx[1:] == tx[:-1]) & (ty[1:] == ty[:-1]) & (otype[1:] == otype[:-1]) & (oid[1:] == oid[:-1])
    keep = ~same
    counts = {"duplicates": int(same.sum()), "tiles_kept": 0, "tiles_too_few": 0,
              "tiles_too_many": 0, "rows_written": 0, "groups_written": 0}
    order, tx, ty, gx, gy = order[keep], tx[keep], ty[keep], gx[keep], gy[keep]

    tile_start = np.flatnonzero(np.r_[True, (tx[1:] != tx[:-1]) | (ty[1:] != ty[:-1])])
    tile_len = np.diff(np.r_[tile_start, len(tx)])
    too_few, too_many = tile_len < min_entities, tile_len > max_entities
    counts["tiles_too_few"] = int(too_few.sum())
    counts["tiles_too_many"] = int(too_many.sum())
    counts["tiles_kept"] = int((~too_few & ~too_many).sum())
    row_ok = np.repeat(~too_few & ~too_many, tile_len)
    order, tx, ty, gx, gy = order[row_ok], tx[row_ok], ty[row_ok], gx[row_ok], gy[row_ok]
    if len(order) == 0:
        return counts

    kind_names = pa.array(KINDS)
    type_names = pa.array(OSM_TYPES)
    group_start = np.flatnonzero(np.r_[True, (gx[1:] != gx[:-1]) | (gy[1:] != gy[:-1])])
    group_end = np.r_[group_start[1:], len(order)]
    for s, e in zip(group_start, group_end):
        rows = t.take(pa.array(order[s:e]))
        tiles = [grid.tile_name(zoom, int(x), int(y)) for x, y in zip(tx[s:e], ty[s:e])]
        group = grid.tile_name(zoom - grid.GROUP_LEVELS, int(gx[s]), int(gy[s]))
        table = pa.table({
            "tile": pa.array(tiles, pa.string()),
            "group": pa.array([group] * (e - s), pa.string()),
            "osm_type": type_names.take(rows.column("osm_type").cast(pa.int32())),
            "osm_id": rows.column("osm_id"),
            "kind": kind_names.take(rows.column("kind").cast(pa.int32())),
            "tags": rows.column("tags"),
            "geometry": rows.column("geometry"),
            "bbox": pa.StructArray.from_arrays([rows.column(c).combine_chunks() for c in BBOX_FIELDS],
                                               names=list(BBOX_FIELDS)),
        }, schema=BASE_SCHEMA)
        write_group_file(table, out_dir / f"{group}.parquet", meta)
        counts["rows_written"] += e - s
        counts["groups_written"] += 1
    return counts

"""``gjp tile`` for OSM inputs: entities → every z16 tile they intersect → group files.

An entity goes to every tile its geometry intersects (not only the tiles holding its
vertices) and is clipped to each in fractional tile coordinates, where tile borders are
straight lines (:mod:`gjp.grid`). Geometries spanning several tiles are split recursively
(halving the tile range and clipping to each half), so cost grows with the number of
pieces, not with the size of the bounding range. Clipped pieces stay separate parts and
polygons keep their holes. Pieces that only touch a tile (a shared border, a corner) are
not assigned to it.

Rows are spilled to bucket files by group while reading, then each bucket is sorted,
de-duplicated across inputs, filtered by entity count per tile, and written as one
GeoParquet file per group. Memory is bounded by settings, not by the input: entities are
read and tiled ``_CHUNK_SIZE`` at a time, at most ``_SPILL_BUFFER_ROWS`` rows wait for a
spill, and a bucket of more than ``_BUCKET_ROWS`` rows is split again by group before it is
finished in memory (only a single group larger than that stays whole). What still grows
is the reader's (:mod:`gjp.osm.reader`).
"""

from __future__ import annotations

import ctypes
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
from gjp.parallel import LocalPool, executor
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
#: Entities read and tiled at a time: their shapely geometries, tag dicts and clipped
#: pieces are the largest Python objects of the read phase (~2 kB an entity).
_CHUNK_SIZE = 20_000
#: Rows collected from several chunks before they are written to the buckets (fewer,
#: larger row groups in the spill files), ~0.5 kB a row in Arrow.
_SPILL_BUFFER_ROWS = 50_000
#: Rows a bucket may hold to be finished in memory (~1 kB a row at its peak); larger
#: buckets are split by group first.
_BUCKET_ROWS = 100_000
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

    Each input is read and spilled by a job of its own, then each bucket (its inputs'
    files joined in input order) is finished by a job; the jobs run on ``workers`` threads,
    or on the Dask cluster at ``scheduler`` (which must then see the inputs and the
    output's directory under the same paths: the spill files are staged beside the output).
    With ``workers`` > 1, that many inputs are read at once: peak memory is about
    ``workers`` times one reader's."""
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
        # jobs run one by one in this thread: the reader's own bar, as it always showed;
        # elsewhere (threads, a cluster) one bar over the files, here
        inline = isinstance(pool, LocalPool) and min(pool.workers, len(checked)) <= 1
        read_jobs = []
        for source, (path, fmt) in enumerate(checked):
            index, own_index = _node_index_of(node_index, source, len(checked), pool.path)
            read_jobs.append(_ReadJob(
                source=source, path=pool.path(path), file_format=fmt, node_index=index,
                own_node_index_file=own_index, tag_filter=tag_filter, zoom=zoom, n_buckets=n_buckets,
                spill_dir=pool.path(spill_dir / f"src{source}"), reporter=reporter if inline else QUIET))
        bar = QUIET.progress() if inline else reporter.progress(total=len(read_jobs), desc="reading", unit=" file")
        read_results = list(pool.map(_read_extract, read_jobs, bar))
        bar.close()
        for read in read_results:
            report.read.add(read.report)
            report.rows += read.rows
        _release_freed_memory()
        paths = []
        for b in sorted(set().union(*(read.bucket_rows for read in read_results))):
            sources = [job.source for job, read in zip(read_jobs, read_results) if b in read.bucket_rows]
            bucket = spill_dir / f"{b}.parquet"
            _join_sources([spill_dir / f"src{i}" / f"{b}.parquet" for i in sources], bucket)
            n_rows = sum(read.bucket_rows.get(b, 0) for read in read_results)
            paths += _split_bucket(bucket, b, n_buckets, n_rows)
        for job in read_jobs:
            (spill_dir / f"src{job.source}").rmdir()
        jobs = [(pool.path(p), pool.path(staging), zoom, min_entities, max_entities, meta) for p in paths]
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

def _group_hash(tile_x: np.ndarray, tile_y: np.ndarray) -> np.ndarray:
    gx = (tile_x >> grid.GROUP_LEVELS).astype(np.int64)
    gy = (tile_y >> grid.GROUP_LEVELS).astype(np.int64)
    return (gx * 73856093) ^ (gy * 19349663)


def _bucket_of(tile_x: np.ndarray, tile_y: np.ndarray, n_buckets: int) -> np.ndarray:
    return _group_hash(tile_x, tile_y) % n_buckets


class _Spill:
    """Rows of many chunks, buffered, then appended to the bucket files of their groups."""

    def __init__(self, spill_dir: Path, n_buckets: int):
        self.spill_dir, self.n_buckets = spill_dir, n_buckets
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.rows: dict[int, int] = {}  # rows written to each bucket
        self.buffer: list[pa.Table] = []
        self.buffered = 0

    def add(self, rows: pa.Table) -> None:
        self.buffer.append(rows)
        self.buffered += rows.num_rows
        if self.buffered >= _SPILL_BUFFER_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        rows = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        bucket = _bucket_of(rows.column("tile_x").to_numpy(), rows.column("tile_y").to_numpy(), self.n_buckets)
        _write_partitions(rows, bucket, self.writers, self.rows, lambda b: self.spill_dir / f"{b}.parquet")

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


@dataclass(frozen=True)
class _ReadJob:
    """One input extract to read and spill into its own bucket files (picklable, for Dask)."""

    source: int          # the input's position: kept in the rows, orders the join
    path: Path
    file_format: str
    node_index: str
    own_node_index_file: bool  # a file gjp names for this input, removed after reading
    tag_filter: TagFilter
    zoom: int
    n_buckets: int
    spill_dir: Path      # staging/.spill/src{source}
    reporter: Reporter   # QUIET unless the job runs in the gjp process's own thread


@dataclass
class _ReadResult:
    report: ReadReport
    rows: int                    # (entity, tile) rows spilled
    bucket_rows: dict[int, int]  # rows in each bucket file of this input


def _read_extract(job: _ReadJob) -> _ReadResult:
    """Read one extract, tile its entities and spill the rows to ``job.spill_dir/{bucket}.parquet``."""
    read = _ReadResult(ReadReport(), 0, {})
    job.spill_dir.mkdir()
    spill = _Spill(job.spill_dir, job.n_buckets)
    try:
        try:
            chunks = read_osm(job.path, job.tag_filter, file_format=job.file_format, node_index=job.node_index,
                              chunk_size=_CHUNK_SIZE, report=read.report, reporter=job.reporter)
            for entities in chunks:
                rows = assign_tiles(entities, job.zoom, job.source)
                read.rows += rows.num_rows
                spill.add(rows)
        except RuntimeError as err:
            raise GjpError(f"{job.path}: corrupt or truncated OSM file ({err})") from err
        spill.flush()
    finally:
        spill.close()
        if job.own_node_index_file:
            Path(job.node_index.partition(",")[2]).unlink(missing_ok=True)
    read.bucket_rows = spill.rows
    _release_freed_memory()  # before this worker's next job (on a cluster, a bucket's)
    return read


def _node_index_of(node_index: str, source: int, n_inputs: int, as_seen_by_jobs) -> tuple[str, bool]:
    """The node index of one input's job, and whether its file is gjp's own. A file-backed
    index gets a file per input when there are several (jobs may read at once, and pyosmium
    would also find another input's nodes in a reused file); one input keeps the file as
    named, and that file is left, as always."""
    kind, _, file = node_index.partition(",")
    if not file:
        return node_index, False
    if n_inputs == 1:
        return f"{kind},{as_seen_by_jobs(Path(file))}", False
    return f"{kind},{as_seen_by_jobs(Path(f'{file}.src{source}'))}", True


def _join_sources(parts: list[Path], bucket: Path) -> None:
    """One bucket's per-input files joined into ``bucket`` in input order, a row group at a
    time: its rows then come in the order of reading the inputs one after the other."""
    if len(parts) == 1:
        parts[0].rename(bucket)
        return
    with pq.ParquetWriter(bucket, _SPILL_SCHEMA, compression="lz4") as writer:
        for part in parts:
            with pq.ParquetFile(part) as rows:
                for i in range(rows.num_row_groups):
                    writer.write_table(rows.read_row_group(i))
            part.unlink()


def _release_freed_memory() -> None:
    """Hand what the read phase freed back to the system before the buckets are finished:
    Arrow's pool and glibc keep freed memory for reuse, which the finishing (other sizes,
    other allocator) rarely gets, so the two phases' peaks would add up."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _write_partitions(rows: pa.Table, part: np.ndarray, writers: dict, counts: dict, path_of) -> None:
    """Append each partition of ``rows`` to its file, keeping the rows' order in each."""
    order = np.argsort(part, kind="stable")
    sorted_part = part[order]
    starts = np.flatnonzero(np.r_[True, sorted_part[1:] != sorted_part[:-1]])
    ends = np.r_[starts[1:], len(order)]
    rows = rows.take(pa.array(order))
    for s, e in zip(starts, ends):
        p = int(sorted_part[s])
        writer = writers.get(p)
        if writer is None:
            writer = writers[p] = pq.ParquetWriter(path_of(p), _SPILL_SCHEMA, compression="lz4")
        writer.write_table(rows.slice(s, e - s))
        counts[p] = counts.get(p, 0) + int(e - s)


def _split_bucket(path: Path, bucket: int, n_buckets: int, n_rows: int) -> list[Path]:
    """The bucket file itself when it is small enough to finish in memory, otherwise its
    rows split by group into parts of about ``_BUCKET_ROWS``, a row group at a time."""
    n_parts = -(-n_rows // _BUCKET_ROWS)
    if n_parts <= 1:
        return [path]
    writers: dict[int, pq.ParquetWriter] = {}
    counts: dict[int, int] = {}
    try:
        spilled = pq.ParquetFile(path)
        for i in range(spilled.num_row_groups):
            rows = spilled.read_row_group(i)
            # the bucket's own hash, divided by n_buckets: a fresh split of its groups
            h = _group_hash(rows.column("tile_x").to_numpy(), rows.column("tile_y").to_numpy())
            _write_partitions(rows, (h // n_buckets) % n_parts, writers, counts,
                              lambda p: path.with_name(f"{bucket}.{p}.parquet"))
    finally:
        for w in writers.values():
            w.close()
    path.unlink()
    return [path.with_name(f"{bucket}.{p}.parquet") for p in sorted(writers)]


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

"""Read an OSM file into entities: one per tagged object, with its lon/lat geometry.

Two streaming passes with pyosmium's ``FileProcessor``:

1. relations only: which relations are areas (``type=multipolygon|boundary``), and which
   other tagged relations need which member ways and nodes (nested relations flattened);
2. everything, with node locations and area assembly: tagged nodes → points, tagged ways →
   lines or polygons (OSM's area convention, :mod:`gjp.osm.areas`), assembled relation
   areas → multipolygons; the member geometry of other relations is collected on the way.

Untagged nodes are dropped by a C++ filter before they reach Python (their locations are
still indexed). Entities are yielded in chunks so that country-sized files stream.

What grows with the input stays out of Python objects: relations, their flattened members
and the geometry of the member ways go to an SQLite file in a scratch directory (its page
cache is bounded), and the ids of the needed member ways are one sorted ``array`` (8 bytes
each). pyosmium itself holds the node-location index and, until their relations come, the
member ways of multipolygons (a bare pass with areas holds as much).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import osmium
import shapely

from gjp.kinds import COLLECTION, KINDS, LINE, MULTIPOLYGON, NODE, POINT, POLYGON, RELATION, WAY
from gjp.osm.areas import is_area
from gjp.tagfilter import TagFilter
from gjp.ui import QUIET, Reporter

AREA_RELATION_TYPES = frozenset({"multipolygon", "boundary"})
NODE_INDEX_TYPES = ("flex_mem", "sparse_mem_array", "dense_mem_array", "sparse_file_array",
                    "dense_file_array", "sparse_mmap_array", "dense_mmap_array", "sparse_mem_map")
#: How deep nested relations (a relation whose members are relations) are followed.
MAX_RELATION_DEPTH = 8


@dataclass
class ReadReport:
    """What reading found, and what it had to skip or repair."""

    points: int = 0
    lines: int = 0
    polygons: int = 0
    multipolygons: int = 0
    relations: int = 0
    ways_repaired: int = 0         # nodes missing: kept the known runs of the line
    ways_skipped: int = 0          # nodes missing: an area, or fewer than 2 known points
    polygons_made_valid: int = 0   # self-intersecting or otherwise invalid rings repaired
    area_relations_skipped: int = 0  # multipolygon/boundary that could not be assembled
    relations_repaired: int = 0    # other relations with some members missing
    relations_skipped: int = 0     # other relations with no member present

    def add(self, other: ReadReport) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Entities:
    """A chunk of entities as parallel columns; ``geometry`` holds shapely objects (lon/lat)."""

    osm_type: np.ndarray  # uint8 index into OSM_TYPES
    osm_id: np.ndarray    # int64, the real OSM id
    kind: np.ndarray      # uint8 index into KINDS
    tags: list[dict[str, str]]
    geometry: np.ndarray  # object array of shapely geometries

    def __len__(self) -> int:
        return len(self.osm_id)


@dataclass
class _Chunk:
    osm_type: list = field(default_factory=list)
    osm_id: list = field(default_factory=list)
    kind: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    geometry: list = field(default_factory=list)  # WKB hex strings or shapely geometries

    def append(self, osm_type, osm_id, kind, tags, geometry):
        self.osm_type.append(osm_type)
        self.osm_id.append(osm_id)
        self.kind.append(kind)
        self.tags.append(tags)
        self.geometry.append(geometry)


def _tag_pairs(taglist):
    """The ``(key, value)`` pairs (``osmium.osm.Tag``) of a pyosmium TagList.

    The one place gjp uses pyosmium internals (``TagList._pyosmium_data`` and its
    ``tags_begin`` / ``tags_next`` / ``tags_size``, what pyosmium's own ``TagIterator``
    calls). The public iterator adds a Python-level ``__next__`` per tag: with it, all of
    ``gjp tile`` is 10–15% slower on Monaco and 20–26% on Porto (pyosmium 4.3.2, best of 5;
    DECISIONS.md). When the internals are missing this is the public API (same tags,
    slower); tests/test_real_extracts.py fails, naming the pyosmium version, when they go
    or disagree with it.
    """
    try:
        data = taglist._pyosmium_data
        it, step, size = data.tags_begin(), data.tags_next, data.tags_size()
    except AttributeError:
        return iter(taglist)
    return (step(it) for _ in range(size))


def read_osm(path: str | Path, tag_filter: TagFilter, *, file_format: str = "",
             node_index: str = "flex_mem", chunk_size: int = 200_000,
             report: ReadReport | None = None, reporter: Reporter = QUIET,
             scratch_dir: str | Path | None = None) -> Iterator[Entities]:
    """Yield the entities of one OSM file (``.osm.pbf``, ``.osm``, ``.osm.bz2``) in chunks.

    ``file_format`` is pyosmium's format string (``"pbf"``, ``"osm.bz2"``…); empty means
    "guess from the file name". Chunks hold at most ``chunk_size`` entities, and chunks of
    relations at most ``chunk_size`` member geometries. The relation store is written in
    ``scratch_dir`` (a temporary directory when not given) and removed at the end.
    pyosmium errors (corrupt or truncated files) propagate as ``RuntimeError``.
    """
    report = report if report is not None else ReadReport()
    with ExitStack() as stack:
        if scratch_dir is None:
            scratch_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gjp-relations-"))
        store = stack.enter_context(_RelationStore(Path(scratch_dir)))
        yield from _read(path, tag_filter, file_format, node_index, chunk_size, report, reporter, store)


def _read(path, tag_filter, file_format, node_index, chunk_size, report, reporter, store) -> Iterator[Entities]:
    name = Path(path).name

    def source():
        return osmium.io.File(str(path), file_format)

    _scan_relations(source(), tag_filter, store)
    need_ways = store.member_way_ids()
    n_need = len(need_ways)

    def needed(way_id: int) -> bool:
        i = bisect_left(need_ways, way_id)
        return i < n_need and need_ways[i] == way_id

    wkb = osmium.geom.WKBFactory()
    apply_filter = tag_filter.apply
    member_ways: dict[int, tuple[object, bool]] = {}
    assembled = 0

    processor = (osmium.FileProcessor(source()).with_locations(node_index).with_areas()
                 .with_filter(osmium.filter.EmptyTagFilter().enable_for(osmium.osm.NODE)))
    chunk = _Chunk()
    bar = reporter.progress(desc=f"reading {name}", unit=" obj")
    seen = 0
    for obj in processor:
        seen += 1
        if seen % 8192 == 0:
            bar.update(8192)
        if obj.is_node():
            loc = obj.location
            tags = apply_filter(_tag_pairs(obj.tags))
            if tags:
                chunk.append(NODE, obj.id, POINT, tags, (loc.lon, loc.lat))
                report.points += 1
        elif obj.is_way():
            raw_tags = obj.tags
            is_member = bool(n_need) and needed(obj.id)
            if not is_member and not raw_tags:
                continue
            tags = apply_filter(_tag_pairs(raw_tags))
            if not tags and not is_member:
                continue
            polygon = obj.is_closed() and len(obj.nodes) >= 4 and is_area(tags)
            try:
                geometry = wkb.create_linestring(obj)
            except (osmium.InvalidLocationError, RuntimeError):
                geometry = None if polygon else _known_runs(obj)
                if tags:
                    if geometry is None:
                        report.ways_skipped += 1
                    else:
                        report.ways_repaired += 1
            if geometry is None:
                continue
            if is_member:
                member_ways[obj.id] = (geometry, polygon)
                if len(member_ways) >= chunk_size:
                    store.add_member_ways(_member_way_geometries(member_ways, report))
                    member_ways = {}
            if tags:
                chunk.append(WAY, obj.id, POLYGON if polygon else LINE, tags, geometry)
        elif obj.is_area():
            if obj.from_way():
                continue  # closed ways are handled above, by OSM's area convention
            rel_id = obj.orig_id()
            tags = store.area_tags(rel_id)
            if tags is None:
                continue
            try:
                geometry = wkb.create_multipolygon(obj)
            except (osmium.InvalidLocationError, RuntimeError):
                continue
            assembled += 1
            chunk.append(RELATION, rel_id, MULTIPOLYGON, tags, geometry)
        if len(chunk.osm_id) >= chunk_size:
            yield _finish(chunk, report)
            chunk = _Chunk()
    bar.update(seen % 8192)
    bar.close()
    store.add_member_ways(_member_way_geometries(member_ways, report))
    del member_ways

    report.area_relations_skipped += store.n_area_relations - assembled
    locations = processor.node_location_storage
    n_parts = 0
    for rel_id, tags, incomplete, members in store.other_relations():
        parts = []
        for mtype, ref, way_wkb in members:
            if mtype == "w":
                if way_wkb is not None:
                    parts.append(way_wkb)
            else:
                # member nodes, tagged or not, are all in the node-location index
                try:
                    loc = locations.get(ref)
                except KeyError:
                    continue
                parts.append(shapely.Point(loc.lon, loc.lat))
        if not parts:
            report.relations_skipped += 1
            continue
        if len(parts) < len(members) or incomplete:
            report.relations_repaired += 1
        chunk.append(RELATION, rel_id, COLLECTION, tags, shapely.GeometryCollection(_decode_parts(parts)))
        n_parts += len(parts)
        # a relation chunk is bounded by its member geometries (a route has hundreds)
        if len(chunk.osm_id) >= chunk_size or n_parts >= chunk_size:
            yield _finish(chunk, report)
            chunk, n_parts = _Chunk(), 0
    if chunk.osm_id:
        yield _finish(chunk, report)


def _decode_parts(parts: list) -> list:
    """Member ways come from the store as WKB, member nodes as points."""
    is_wkb = [isinstance(p, bytes) for p in parts]
    if any(is_wkb):
        decoded = iter(shapely.from_wkb([p for p, w in zip(parts, is_wkb) if w]))
        parts = [next(decoded) if w else p for p, w in zip(parts, is_wkb)]
    return parts


_MEMBER_TYPE = {"n": 0, "w": 1, "r": 2}
_MEMBER_TYPE_NAME = "nwr"


class _RelationStore:
    """Relations, their members and the geometry of the needed member ways, in SQLite.

    ``relations``: every relation's id, whether it is an area, its tags (JSON, in order;
    NULL when none is left); ``members``: every relation's members as in the file; ``flat``:
    the node and way members of the other (non-area) relations, nested ones followed, and
    ``incomplete`` those where a member relation was missing; ``ways``: the final geometry
    (WKB) of their member ways."""

    def __init__(self, scratch_dir: Path):
        handle, name = tempfile.mkstemp(prefix="relations-", suffix=".sqlite", dir=scratch_dir)
        os.close(handle)
        self.path = Path(name)
        self.db = sqlite3.connect(self.path)
        # a scratch file: nothing to recover after a crash
        self.db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
            CREATE TABLE relations (id INTEGER PRIMARY KEY, area INTEGER, tags TEXT);
            CREATE TABLE incomplete (id INTEGER PRIMARY KEY);
            CREATE TABLE members (rel INTEGER, pos INTEGER, type INTEGER, ref INTEGER,
                                  PRIMARY KEY (rel, pos)) WITHOUT ROWID;
            CREATE TABLE flat (rel INTEGER, pos INTEGER, type INTEGER, ref INTEGER,
                               PRIMARY KEY (rel, pos)) WITHOUT ROWID;
            CREATE TABLE ways (id INTEGER PRIMARY KEY, wkb BLOB);
        """)
        self.n_area_relations = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.db.close()
        self.path.unlink(missing_ok=True)

    def add_relations(self, relations: list, members: list) -> None:
        self.db.executemany("INSERT OR REPLACE INTO relations VALUES (?, ?, ?)", relations)
        self.db.executemany("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)", members)

    def members(self, rel_id: int) -> list[tuple[str, int]]:
        rows = self.db.execute("SELECT type, ref FROM members WHERE rel = ? ORDER BY pos", (rel_id,))
        return [(_MEMBER_TYPE_NAME[t], ref) for t, ref in rows]

    def has_relation(self, rel_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM relations WHERE id = ?", (rel_id,)).fetchone() is not None

    def area_tags(self, rel_id: int) -> dict[str, str] | None:
        row = self.db.execute("SELECT tags FROM relations WHERE id = ? AND area = 1 AND tags IS NOT NULL", (rel_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def add_member_ways(self, geometries: dict[int, object]) -> None:
        if geometries:
            ids = list(geometries)
            blobs = shapely.to_wkb(np.array([geometries[i] for i in ids], dtype=object))
            self.db.executemany("INSERT OR REPLACE INTO ways VALUES (?, ?)", zip(ids, blobs))

    def member_way_ids(self) -> array:
        ids = array("q")
        for (ref,) in self.db.execute("SELECT DISTINCT ref FROM flat WHERE type = 1 ORDER BY ref"):
            ids.append(ref)
        return ids

    def other_relations(self):
        """``(id, tags, incomplete, [(type, ref, way WKB or None), …])`` in id order."""
        rels = self.db.cursor()
        rels.execute("SELECT r.id, r.tags, i.id IS NOT NULL FROM relations r LEFT JOIN incomplete i ON i.id = r.id "
                     "WHERE r.area = 0 AND r.tags IS NOT NULL ORDER BY r.id")
        for rel_id, tags, incomplete in rels:
            members = self.db.execute(
                "SELECT f.type, f.ref, w.wkb FROM flat f LEFT JOIN ways w ON f.type = 1 AND w.id = f.ref "
                "WHERE f.rel = ? ORDER BY f.pos", (rel_id,)).fetchall()
            yield rel_id, json.loads(tags), bool(incomplete), [(_MEMBER_TYPE_NAME[t], ref, g) for t, ref, g in members]


def _scan_relations(path, tag_filter: TagFilter, store: _RelationStore) -> None:
    """Store every relation's members, the tags of the area relations and of the other
    tagged relations, and the flattened node and way members of the latter."""
    relations, members = [], []
    n_area = 0
    for rel in osmium.FileProcessor(path, osmium.osm.RELATION):
        members += [(rel.id, pos, _MEMBER_TYPE[m.type], m.ref) for pos, m in enumerate(rel.members)]
        tags = tag_filter.apply(_tag_pairs(rel.tags))
        area = tags.get("type") in AREA_RELATION_TYPES
        if tags.get("type") == "multipolygon":
            del tags["type"]  # structural: the entity's kind already says it
        n_area += area and bool(tags)
        # every relation gets a row (nested relations are looked up); no tags: no entity
        relations.append((rel.id, int(area), json.dumps(tags) if tags else None))
        if len(members) >= 100_000 or len(relations) >= 100_000:
            store.add_relations(relations, members)
            relations, members = [], []
    store.add_relations(relations, members)
    store.n_area_relations = n_area

    flat_rows = []
    for (rel_id,) in store.db.cursor().execute(
            "SELECT id FROM relations WHERE area = 0 AND tags IS NOT NULL ORDER BY id"):
        out: list[tuple[str, int]] = []
        if _flatten(rel_id, store, out, {rel_id}, 0):
            store.db.execute("INSERT OR REPLACE INTO incomplete VALUES (?)", (rel_id,))
        flat_rows += [(rel_id, pos, _MEMBER_TYPE[t], ref) for pos, (t, ref) in enumerate(out)]
        if len(flat_rows) >= 100_000:
            store.db.executemany("INSERT OR REPLACE INTO flat VALUES (?, ?, ?, ?)", flat_rows)
            flat_rows = []
    store.db.executemany("INSERT OR REPLACE INTO flat VALUES (?, ?, ?, ?)", flat_rows)


def _flatten(rel_id, store, out, visiting, depth) -> bool:
    """Append the node and way members of ``rel_id`` (following member relations) to
    ``out``; return whether a member relation was missing from the file."""
    missing = False
    for mtype, ref in store.members(rel_id):
        if mtype in ("n", "w"):
            out.append((mtype, ref))
        elif not store.has_relation(ref):
            missing = True
        elif ref not in visiting and depth < MAX_RELATION_DEPTH:
            visiting.add(ref)
            missing |= _flatten(ref, store, out, visiting, depth + 1)
    return missing


def _known_runs(way):
    """The parts of a way whose node locations are known, as separate lines (a way that
    leaves the extract keeps what is inside it, without false joins across the gap)."""
    runs, run = [], []
    for node in way.nodes:
        loc = node.location
        if loc.valid():
            point = (loc.lon, loc.lat)
            if not run or run[-1] != point:
                run.append(point)
        else:
            if len(run) >= 2:
                runs.append(run)
            run = []
    if len(run) >= 2:
        runs.append(run)
    if not runs:
        return None
    return shapely.LineString(runs[0]) if len(runs) == 1 else shapely.MultiLineString(runs)


def _finish(chunk: _Chunk, report: ReadReport) -> Entities:
    """Turn a chunk's raw geometries into shapely objects: polygons from closed ways,
    repaired where invalid, and relation collections from their members."""
    kind = np.array(chunk.kind, dtype=np.uint8)
    geoms = np.empty(len(kind), dtype=object)
    for i, g in enumerate(chunk.geometry):
        geoms[i] = g
    is_hex = np.array([isinstance(g, str) for g in chunk.geometry], dtype=bool)
    if is_hex.any():
        geoms[is_hex] = _from_hex_wkb(geoms[is_hex])
    is_xy = np.array([isinstance(g, tuple) for g in chunk.geometry], dtype=bool)
    if is_xy.any():
        geoms[is_xy] = shapely.points(np.array([g for g in chunk.geometry if isinstance(g, tuple)]))
    ways = kind == POLYGON
    if ways.any():
        polys, as_line = _rings_to_polygons(geoms[ways], report)
        geoms[ways] = polys
        idx = np.flatnonzero(ways)[as_line]
        kind[idx] = LINE
    areas = kind == MULTIPOLYGON
    if areas.any():
        geoms[areas] = _valid_polygons(geoms[areas], report)
    counts = np.bincount(kind, minlength=len(KINDS))
    report.lines += int(counts[LINE])
    report.polygons += int(counts[POLYGON])
    report.multipolygons += int(counts[MULTIPOLYGON])
    report.relations += int(counts[COLLECTION])
    return Entities(np.array(chunk.osm_type, dtype=np.uint8), np.array(chunk.osm_id, dtype=np.int64),
                    kind, chunk.tags, geoms)


def _rings_to_polygons(lines: np.ndarray, report: ReadReport):
    """Closed linestrings → valid polygons. Rings of fewer than 4 coordinates (A-B-A) and
    rings that collapse when repaired stay lines; the mask says which."""
    out = lines.copy()
    multi = shapely.get_type_id(lines) != 1  # repaired MultiLineStrings are not rings
    ncoords = shapely.get_num_coordinates(lines)
    ok = ~multi & (ncoords >= 4) & shapely.is_closed(lines)
    if ok.any():
        coords, index = shapely.get_coordinates(lines[ok], return_index=True)
        rings = shapely.linearrings(coords, indices=index)
        out[ok] = _valid_polygons(shapely.polygons(rings), report)
    collapsed = shapely.is_empty(out) | ~ok
    out[collapsed] = lines[collapsed]
    return out, collapsed


def _valid_polygons(polys: np.ndarray, report: ReadReport) -> np.ndarray:
    invalid = ~shapely.is_valid(polys)
    if invalid.any():
        report.polygons_made_valid += int(invalid.sum())
        fixed = shapely.make_valid(polys[invalid], method="structure", keep_collapsed=False)
        polys = polys.copy()
        polys[invalid] = fixed
    return polys


def _from_hex_wkb(hexes: np.ndarray) -> np.ndarray:
    # pyosmium's WKB factory writes hex; GEOS parses binary WKB ~5× faster than hex.
    return shapely.from_wkb(np.array([bytes.fromhex(h) for h in hexes], dtype=object))


def _member_way_geometries(raw: dict[int, tuple[object, bool]], report: ReadReport) -> dict[int, object]:
    """Decode the member ways of other relations once (a way is often in many routes);
    closed area-like ways become polygons, as when they are entities themselves."""
    if not raw:
        return {}
    ids = list(raw)
    geoms = np.empty(len(ids), dtype=object)
    for i, way_id in enumerate(ids):
        geoms[i] = raw[way_id][0]
    is_hex = np.array([isinstance(g, str) for g in geoms], dtype=bool)
    if is_hex.any():
        geoms[is_hex] = _from_hex_wkb(geoms[is_hex])
    polygon = np.array([raw[way_id][1] for way_id in ids], dtype=bool)
    if polygon.any():
        geoms[polygon] = _rings_to_polygons(geoms[polygon], report)[0]
    return dict(zip(ids, geoms))

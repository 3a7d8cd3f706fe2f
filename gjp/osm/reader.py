"""Read an OSM file into entities: one per tagged object, with its lon/lat geometry.

Two streaming passes with pyosmium's ``FileProcessor``:

1. relations only: which relations are areas (``type=multipolygon|boundary``), and which
   other tagged relations need which member ways and nodes (nested relations flattened);
2. everything, with node locations and area assembly: tagged nodes → points, tagged ways →
   lines or polygons (OSM's area convention, :mod:`gjp.osm.areas`), assembled relation
   areas → multipolygons; the member geometry of other relations is collected on the way.

Untagged nodes are dropped by a C++ filter before they reach Python (their locations are
still indexed). Entities are yielded in chunks so that country-sized files stream.
"""

from __future__ import annotations

from collections.abc import Iterator
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
             report: ReadReport | None = None, reporter: Reporter = QUIET) -> Iterator[Entities]:
    """Yield the entities of one OSM file (``.osm.pbf``, ``.osm``, ``.osm.bz2``) in chunks.

    ``file_format`` is pyosmium's format string (``"pbf"``, ``"osm.bz2"``…); empty means
    "guess from the file name". pyosmium errors (corrupt or truncated files) propagate as
    ``RuntimeError``.
    """
    report = report if report is not None else ReadReport()
    name = Path(path).name

    def source():
        return osmium.io.File(str(path), file_format)

    relations = _scan_relations(source(), tag_filter)
    wkb = osmium.geom.WKBFactory()
    apply_filter = tag_filter.apply
    need_ways = relations.member_ways
    member_way_geoms: dict[int, tuple[object, bool]] = {}
    assembled: set[int] = set()

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
            needed = obj.id in need_ways
            raw_tags = obj.tags
            if not needed and not raw_tags:
                continue
            tags = apply_filter(_tag_pairs(raw_tags))
            if not tags and not needed:
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
            if needed:
                member_way_geoms[obj.id] = (geometry, polygon)
            if tags:
                chunk.append(WAY, obj.id, POLYGON if polygon else LINE, tags, geometry)
        elif obj.is_area():
            if obj.from_way():
                continue  # closed ways are handled above, by OSM's area convention
            rel_id = obj.orig_id()
            if rel_id not in relations.area_tags:
                continue
            try:
                geometry = wkb.create_multipolygon(obj)
            except (osmium.InvalidLocationError, RuntimeError):
                continue
            assembled.add(rel_id)
            chunk.append(RELATION, rel_id, MULTIPOLYGON, relations.area_tags[rel_id], geometry)
        if len(chunk.osm_id) >= chunk_size:
            yield _finish(chunk, report)
            chunk = _Chunk()
    bar.update(seen % 8192)
    bar.close()

    report.area_relations_skipped += len(relations.area_tags) - len(assembled)
    locations = processor.node_location_storage
    way_geometry = _member_way_geometries(member_way_geoms, report)
    for rel_id in sorted(relations.other_tags):
        parts = []
        members = relations.flat_members[rel_id]
        for mtype, ref in members:
            if mtype == "w":
                if ref in way_geometry:
                    parts.append(way_geometry[ref])
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
        if len(parts) < len(members) or relations.incomplete[rel_id]:
            report.relations_repaired += 1
        chunk.append(RELATION, rel_id, COLLECTION, relations.other_tags[rel_id], shapely.GeometryCollection(parts))
    if chunk.osm_id:
        yield _finish(chunk, report)


@dataclass
class _Relations:
    area_tags: dict[int, dict[str, str]]
    other_tags: dict[int, dict[str, str]]
    flat_members: dict[int, list[tuple[str, int]]]
    incomplete: dict[int, bool]
    member_ways: set[int]


def _scan_relations(path, tag_filter: TagFilter) -> _Relations:
    members: dict[int, tuple[tuple[str, int], ...]] = {}
    area_tags: dict[int, dict[str, str]] = {}
    other_tags: dict[int, dict[str, str]] = {}
    for rel in osmium.FileProcessor(path, osmium.osm.RELATION):
        members[rel.id] = tuple((m.type, m.ref) for m in rel.members)
        tags = tag_filter.apply(_tag_pairs(rel.tags))
        if tags.get("type") in AREA_RELATION_TYPES:
            if tags.get("type") == "multipolygon":
                del tags["type"]  # structural: the entity's kind already says it
            if tags:
                area_tags[rel.id] = tags
        elif tags:
            other_tags[rel.id] = tags

    flat: dict[int, list[tuple[str, int]]] = {}
    incomplete: dict[int, bool] = {}
    member_ways: set[int] = set()
    for rel_id in other_tags:
        out: list[tuple[str, int]] = []
        missing = _flatten(rel_id, members, out, {rel_id}, 0)
        flat[rel_id] = out
        incomplete[rel_id] = missing
        member_ways.update(ref for mtype, ref in out if mtype == "w")
    return _Relations(area_tags, other_tags, flat, incomplete, member_ways)


def _flatten(rel_id, members, out, visiting, depth) -> bool:
    """Append the node and way members of ``rel_id`` (following member relations) to
    ``out``; return whether a member relation was missing from the file."""
    missing = False
    for mtype, ref in members[rel_id]:
        if mtype in ("n", "w"):
            out.append((mtype, ref))
        elif ref in members and ref not in visiting and depth < MAX_RELATION_DEPTH:
            visiting.add(ref)
            missing |= _flatten(ref, members, out, visiting, depth + 1)
        elif ref not in members:
            missing = True
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

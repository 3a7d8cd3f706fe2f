"""``gjp pack-h5``: the graphs (and image chips) into ``dataset.h5``, the one file every
model reads (its format: :mod:`gjp.dataset.format`).

The tag vocabulary maps ``key=value`` strings to ids: a value seen fewer than
``min_tag_count`` times falls back to ``key=*``; a key the vocabulary does not know (when
reusing another dataset's vocabulary) maps to id 0, ``<unk>``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp import __version__, grid
from gjp.dataset.format import (
    DEFAULT_MIN_TAG_COUNT,
    FORMAT,
    FORMAT_VERSION,
    SHARD_NAME,
    DatasetWriter,
    Vocabulary,
    encode_strings,
    read_vocabulary,
)
from gjp.errors import GjpError
from gjp.geoparquet import list_group_files, read_group_file
from gjp.io import atomic_directory, check_output_free, command_line, hdf5_output, read_parquet
from gjp.kinds import KINDS, OSM_TYPES
from gjp.parallel import executor
from gjp.ui import QUIET, Reporter

_GRAPH_COLUMNS = ("tile", "group", "osm_type", "osm_id", "kind", "tags", "min_box", "min_box_width",
                  "min_box_height", "min_box_area", "min_box_angle", "vertices", "vertex_part",
                  "geometry_edges", "visibility_edges")


@dataclass
class PackReport:
    tiles: int = 0
    entities: int = 0
    vocabulary: int = 0
    images: int = 0
    unknown_tags: int = 0
    shards: int = 0

    def summary(self) -> str:
        text = (f"dataset: {self.tiles} tiles, {self.entities} entities, vocabulary of {self.vocabulary} tags"
                f" ({self.unknown_tags} tags unknown to it), {self.images} tiles with an image")
        return text + (f", in {self.shards} shards" if self.shards else "")


# --------------------------------------------------------------------------- packing
# Two passes over the group files, each holding one file at a time: the first counts the
# tag pairs (the vocabulary needs every count before any id is given) and the tiles per
# file (to cut shards); the second writes the tiles, group file by group file, through a
# DatasetWriter that flushes every BLOCK_ENTITIES entities. Memory is bounded by a group
# file, a block, and the distinct tag strings (which grow with the data's variety, not
# its size); docs/PERFORMANCE.md has the figures.

def _empty_graph_table():
    """A graph table with no rows (an images-only dataset)."""
    import pyarrow as pa

    pair_f = pa.list_(pa.list_(pa.float64(), 2))
    pair_i = pa.list_(pa.list_(pa.int32(), 2))
    schema = pa.schema([("tile", pa.string()), ("group", pa.string()), ("osm_type", pa.string()),
                        ("osm_id", pa.int64()), ("kind", pa.string()), ("tags", pa.map_(pa.string(), pa.string())),
                        ("min_box", pa.list_(pa.float64(), 8)), ("min_box_width", pa.float64()),
                        ("min_box_height", pa.float64()), ("min_box_area", pa.float64()),
                        ("min_box_angle", pa.float64()), ("vertices", pair_f), ("vertex_part", pa.list_(pa.int32())),
                        ("geometry_edges", pair_i), ("visibility_edges", pair_i)])
    return schema.empty_table()


@dataclass
class _ImageIndex:
    """``images/index.parquet`` from ``gjp tile RASTER…``: which tiles have a chip."""

    directory: Path
    tiles: list[str]
    zoom: int
    size: int


def _read_image_index(images_dir: Path) -> _ImageIndex:
    from gjp.imagery.chips import read_index_metadata

    meta = read_index_metadata(images_dir)
    table = read_parquet(images_dir / "index.parquet", "image index", columns=["tile"])
    return _ImageIndex(images_dir, sorted(table.column("tile").to_pylist()), meta["zoom"], meta["size"])


@dataclass
class _FileScan:
    """What the first pass learns from one group file."""

    zoom: int
    steps: list
    tiles: int
    pairs: Counter | None


def _scan_file(job) -> _FileScan:
    """First pass over one group file (runs on a worker thread, or a Dask worker): its
    zoom, its tiles counted (each checked to belong to the file's group, so no tile can
    be in two files), and, when the vocabulary is to be built, its ``key=value`` counts."""
    import pyarrow.compute as pc

    path, count_pairs = job
    table, meta = read_group_file(path, require=_GRAPH_COLUMNS, columns=["tile", "tags"] if count_pairs else ["tile"])
    tiles = pc.unique(table.column("tile")).to_pylist()
    for name in tiles:
        try:
            group = grid.group_name(*grid.parse_tile_name(name))
        except ValueError as err:
            raise GjpError(f"{path}: {err}") from None
        if group != path.stem:
            raise GjpError(f"{path}: has tile {name}, which belongs to group {group}, not {path.stem}")
    pairs = None
    if count_pairs:
        tags = table.column("tags").combine_chunks()
        joined = pc.binary_join_element_wise(tags.keys, tags.items, "=")
        counted = pc.value_counts(joined)
        pairs = Counter(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
    return _FileScan(int(meta["zoom"]), meta.get("steps", []), len(tiles), pairs)


@dataclass
class _Unit:
    """One group's tiles, the unit of writing and of shards: a group file, or (images
    only) the chips of a group."""

    group: str
    tiles: int
    path: Path | None = None
    chips: list[str] | None = None


def _scan(files: list[Path], count_pairs: bool, workers: int, scheduler: str | None,
          reporter: Reporter) -> tuple[list[_Unit], int, list, Counter]:
    pairs: Counter = Counter()
    zoom, steps, units = None, [], []
    with executor(workers, scheduler) as pool:
        bar = reporter.progress(total=len(files), desc="counting tags" if count_pairs else "reading graphs",
                                unit=" file")
        jobs = [(pool.path(path), count_pairs) for path in files]
        for path, scan in zip(files, pool.map(_scan_file, jobs, bar)):
            if zoom is not None and scan.zoom != zoom:
                raise GjpError(f"{path}: zoom {scan.zoom}, but other files are zoom {zoom}")
            zoom, steps = scan.zoom, scan.steps
            if scan.pairs:
                pairs.update(scan.pairs)
            units.append(_Unit(path.stem, scan.tiles, path=path))
        bar.close()
    return units, zoom, steps, pairs


def _chip_units(chips: _Chips) -> list[_Unit]:
    """An images-only dataset: every chip a tile, group by group."""
    by_group: dict[str, list[str]] = {}
    for name in chips.tiles:
        by_group.setdefault(grid.group_name(*grid.parse_tile_name(name)), []).append(name)
    return [_Unit(g, len(by_group[g]), chips=sorted(by_group[g])) for g in sorted(by_group)]


def _cut_shards(units: list[_Unit], shard_tiles: int) -> list[list[_Unit]]:
    """Consecutive groups, a new shard once one holds ``shard_tiles`` tiles (a group is
    never split, so a shard may hold a little more); all in one without a limit."""
    if not shard_tiles:
        return [units]
    shards, current, tiles = [], [], 0
    for unit in units:
        current.append(unit)
        tiles += unit.tiles
        if tiles >= shard_tiles:
            shards.append(current)
            current, tiles = [], 0
    if current or not shards:
        shards.append(current)
    return shards


def pack_dataset(graphs_dir: str | Path | None = "graphs", output: str | Path = "dataset.h5", *,
                 images_dir: str | Path | None = None, min_tag_count: int = DEFAULT_MIN_TAG_COUNT,
                 vocabulary_from: str | Path | None = None, shard_tiles: int = 0, workers: int = 1,
                 scheduler: str | None = None, overwrite: bool = False, reporter: Reporter = QUIET) -> PackReport:
    """``gjp pack-h5``: see the module doc. ``vocabulary_from`` reuses another dataset's
    vocabulary (so that ids mean the same in both). ``graphs_dir=None`` packs the image
    chips alone (every chip a tile without entities), for image models on areas without
    OSM data. ``shard_tiles`` writes ``output`` as a directory of shards
    (:data:`SHARD_NAME`) of about that many tiles each, whole groups, one shared
    vocabulary. The first pass runs on ``workers`` threads or the Dask ``scheduler``."""
    output = Path(output)
    check_output_free(output, overwrite, directory=bool(shard_tiles))
    chips = _Chips(_read_image_index(Path(images_dir))) if images_dir is not None else None
    if graphs_dir is None:
        if chips is None:
            raise GjpError("nothing to pack: give the graphs (-i graphs/) and/or --images images/")
        units, zoom, steps, pairs = _chip_units(chips), chips.zoom, [], Counter()
    else:
        files = list_group_files(Path(graphs_dir))
        units, zoom, steps, pairs = _scan(files, vocabulary_from is None, workers, scheduler, reporter)
        if chips is not None and chips.zoom != zoom:
            raise GjpError(f"{images_dir}: chips of zoom-{chips.zoom} tiles, but the graphs are "
                           f"zoom {zoom} (cut the rasters again with `gjp tile RASTER… --zoom {zoom}`)")
    vocab = read_vocabulary(vocabulary_from) if vocabulary_from is not None else Vocabulary.from_counts(
        pairs, min_tag_count)
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "zoom": zoom, "gjp_version": __version__,
             "command": command_line(), "min_tag_count": min_tag_count,
             "params": json.dumps({"graphs": str(graphs_dir) if graphs_dir else None,
                                   "images": str(images_dir) if images_dir else None,
                                   "min_tag_count": min_tag_count,
                                   "vocabulary_from": str(vocabulary_from) if vocabulary_from else None}),
             "source_steps": json.dumps(steps)}
    report = PackReport(vocabulary=len(vocab))
    shards = _cut_shards(units, shard_tiles)
    bar = reporter.progress(total=sum(u.tiles for u in units), desc="packing", unit=" tile")
    if not shard_tiles:
        with hdf5_output(output, overwrite, track_order=True) as f:
            _write_shard(f, units, zoom, vocab, chips, attrs, report, bar)
    else:
        with atomic_directory(output, overwrite) as staging:
            for i, shard in enumerate(shards):
                with hdf5_output(staging / SHARD_NAME.format(i), track_order=True) as f:
                    shard_attrs = {**attrs, "shard": json.dumps({"index": i, "count": len(shards)})}
                    _write_shard(f, shard, zoom, vocab, chips, shard_attrs, report, bar)
    bar.close()
    report.shards = len(shards) if shard_tiles else 0
    return report


class _Strings:
    """Raw keys or values interned as they come; :meth:`sorted` gives the table in sorted
    order and how to renumber the ids already written."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def ids(self, items) -> np.ndarray:
        index = self.index
        return np.fromiter((index.setdefault(v, len(index)) for v in items), dtype=np.int32)

    def sorted(self) -> tuple[list[str], np.ndarray]:
        table = sorted(self.index)
        renumber = np.empty(len(table), dtype=np.int32)
        renumber[[self.index[v] for v in table]] = np.arange(len(table), dtype=np.int32)
        return table, renumber


def _write_shard(f, units: list[_Unit], zoom: int, vocab: Vocabulary, chips: _Chips | None, attrs: dict,
                 report: PackReport, bar) -> None:
    """One dataset file from ``units``, in group order, tiles in name order within a group,
    entities in file order within a tile."""
    writer = DatasetWriter(f, zoom, image_size=chips.size if chips is not None else None)
    keys, values = _Strings(), _Strings()
    for unit in units:
        if unit.path is not None:
            table, _ = read_group_file(unit.path, require=_GRAPH_COLUMNS)
            table = table.select(list(_GRAPH_COLUMNS))
            tile_names = np.array(table.column("tile").to_pylist(), dtype=object)
            order = np.argsort(tile_names, kind="stable")
            table, tile_names = table.take(order), tile_names[order]
            names, first = np.unique(tile_names, return_index=True)
            entity_offsets = np.append(first, len(tile_names)).astype(np.int64)
        else:
            table, names = _empty_graph_table(), np.array(unit.chips, dtype=object)
            entity_offsets = np.zeros(len(names) + 1, dtype=np.int64)
        zxy = np.array([grid.parse_tile_name(n) for n in names], dtype=np.int32).reshape(-1, 3)
        block = {"tiles/name": encode_strings(names), "tiles/zxy": zxy,
                 "tiles/group": encode_strings([unit.group] * len(names)), "tiles/entity_offsets": entity_offsets,
                 **_entity_arrays(table, vocab, keys, values), **_graph_arrays(table)}
        report.tiles += len(names)
        report.entities += table.num_rows
        report.unknown_tags += int((block["entities/tag_ids"] == 0).sum())
        images = None
        if chips is not None:
            images = [chips.read(n) if n in chips.available else None for n in names]
            report.images += sum(chip is not None for chip in images)
        writer.append(block, images)
        bar.update(len(names))
    writer.flush()
    key_table, key_renumber = keys.sorted()
    value_table, value_renumber = values.sorted()
    _renumber(f["entities/tag_key_ids"], key_renumber)
    _renumber(f["entities/tag_value_ids"], value_renumber)
    writer.finish(vocab, key_table, value_table, attrs)


def _renumber(ds, renumber: np.ndarray, block: int = 1 << 20) -> None:
    """First-seen ids → ids into the sorted table, in place, a block at a time."""
    for start in range(0, ds.shape[0], block):
        ds[start:start + block] = renumber[ds[start:start + block]]


def _entity_arrays(table, vocab: Vocabulary, keys: _Strings, values: _Strings) -> dict[str, np.ndarray]:
    kind_code = {k: i for i, k in enumerate(KINDS)}
    type_code = {t: i for i, t in enumerate(OSM_TYPES)}
    tags = [list(t) for t in table.column("tags").to_pylist()]
    counts = np.array([len(t) for t in tags], dtype=np.int64)
    tag_offsets = np.zeros(len(tags) + 1, dtype=np.int64)
    np.cumsum(counts, out=tag_offsets[1:])
    lookup = vocab.lookup
    tag_ids = np.fromiter((lookup(k, v) for t in tags for k, v in t), dtype=np.int32, count=int(counts.sum()))
    shape = np.stack([table.column(c).to_numpy() for c in
                      ("min_box_width", "min_box_height", "min_box_area", "min_box_angle")], axis=1)
    min_box = np.asarray(table.column("min_box").combine_chunks().flatten()).reshape(-1, 8)
    return {
        "entities/kind": np.array([kind_code[k] for k in table.column("kind").to_pylist()], dtype=np.uint8),
        "entities/osm_type": np.array([type_code[t] for t in table.column("osm_type").to_pylist()], dtype=np.uint8),
        "entities/osm_id": table.column("osm_id").to_numpy().astype(np.int64),
        "entities/min_box": min_box.astype(np.float32),
        "entities/min_box_shape": shape.reshape(-1, 4).astype(np.float32),
        "entities/tag_offsets": tag_offsets,
        "entities/tag_ids": tag_ids,
        # the raw tags too (labels need real values, e.g. maxspeed=30 mph, which the
        # vocabulary may have folded into maxspeed=*), as ids into two string tables
        "entities/tag_key_ids": keys.ids(k for t in tags for k, _ in t),
        "entities/tag_value_ids": values.ids(v for t in tags for _, v in t),
    }


def _csr(list_column, width: int | None = None):
    """A list column as (flat values, offsets per row)."""
    import pyarrow as pa

    arr = list_column.combine_chunks()
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    values = arr.flatten()
    if width is not None:
        values = values.flatten() if isinstance(values.type, pa.FixedSizeListType) else values
        flat = np.asarray(values).reshape(-1, width)
    else:
        flat = np.asarray(values)
    return flat, offsets


def _graph_arrays(table) -> dict[str, np.ndarray]:
    nodes, node_offsets = _csr(table.column("vertices"), 2)
    part, _ = _csr(table.column("vertex_part"))
    geometry_edges, geometry_offsets = _csr(table.column("geometry_edges"), 2)
    visibility_edges, visibility_offsets = _csr(table.column("visibility_edges"), 2)
    return {
        "graph/node_offsets": node_offsets, "graph/nodes": nodes.astype(np.float32),
        "graph/node_part": part.astype(np.int32),
        "graph/geometry_edge_offsets": geometry_offsets, "graph/geometry_edges": geometry_edges.astype(np.int32),
        "graph/visibility_edge_offsets": visibility_offsets,
        "graph/visibility_edges": visibility_edges.astype(np.int32),
    }


class _Chips:
    """The chips of ``images/``: which tiles have one, and how to read one (chips are
    written one at a time, so memory does not grow with the dataset)."""

    def __init__(self, index: _ImageIndex):
        self.directory, self.size, self.zoom, self.tiles = index.directory, index.size, index.zoom, index.tiles
        self.available = set(index.tiles)

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        path = self.directory / f"{name}.png"
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise GjpError(f"{path}: not a readable image chip ({err})") from None
        if rgba.shape[:2] != (self.size, self.size):
            raise GjpError(f"{path}: {rgba.shape[1]}×{rgba.shape[0]} px, but the index says {self.size} px chips")
        return rgba[:, :, :3], rgba[:, :, 3] > 0

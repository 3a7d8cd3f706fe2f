"""``gjp pack-h5``: the graphs (and image chips) into ``dataset.h5``, the one file every
model reads (its format: :mod:`gjp.dataset.format`).

The tag vocabulary maps ``key=value`` strings to ids: a value seen fewer than
``min_tag_count`` times falls back to ``key=*``; a key the vocabulary does not know (when
reusing another dataset's vocabulary) maps to id 0, ``<unk>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp import __version__, grid
from gjp.dataset.format import (
    DEFAULT_MIN_TAG_COUNT,
    FORMAT,
    FORMAT_VERSION,
    Vocabulary,
    encode_strings,
    read_vocabulary,
    write_dataset,
)
from gjp.errors import GjpError
from gjp.geoparquet import list_group_files, read_group_file
from gjp.io import check_output_free, command_line, read_parquet
from gjp.kinds import KINDS, OSM_TYPES
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

    def summary(self) -> str:
        return (f"dataset: {self.tiles} tiles, {self.entities} entities, vocabulary of {self.vocabulary} tags"
                f" ({self.unknown_tags} tags unknown to it), {self.images} tiles with an image")


# --------------------------------------------------------------------------- packing

def _read_graphs(graphs_dir: Path, reporter: Reporter):
    import pyarrow as pa

    files = list_group_files(graphs_dir)
    tables, zoom, steps = [], None, None
    for path in reporter.progress(files, desc="reading graphs", unit=" file"):
        table, meta = read_group_file(path, require=_GRAPH_COLUMNS)
        if zoom is not None and int(meta["zoom"]) != zoom:
            raise GjpError(f"{path}: zoom {meta['zoom']}, but other files are zoom {zoom}")
        zoom, steps = int(meta["zoom"]), meta.get("steps", [])
        tables.append(table.select(list(_GRAPH_COLUMNS)))
    return pa.concat_tables(tables), zoom, steps


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


def pack_dataset(graphs_dir: str | Path | None = "graphs", output: str | Path = "dataset.h5", *,
                 images_dir: str | Path | None = None, min_tag_count: int = DEFAULT_MIN_TAG_COUNT,
                 vocabulary_from: str | Path | None = None, overwrite: bool = False,
                 reporter: Reporter = QUIET) -> PackReport:
    """``gjp pack-h5``: see the module doc. ``vocabulary_from`` reuses another dataset's
    vocabulary (so that ids mean the same in both). ``graphs_dir=None`` packs the image
    chips alone (every chip a tile without entities), for image models on areas without
    OSM data."""
    output = Path(output)
    check_output_free(output, overwrite)
    if graphs_dir is None:
        if images_dir is None:
            raise GjpError("nothing to pack: give the graphs (-i graphs/) and/or --images images/")
        image_index = _read_image_index(Path(images_dir))
        chip_tiles, zoom = image_index.tiles, image_index.zoom
        table, steps = _empty_graph_table(), []
    else:
        table, zoom, steps = _read_graphs(Path(graphs_dir), reporter)
        if images_dir is not None:
            image_index = _read_image_index(Path(images_dir))
            if image_index.zoom != zoom:
                raise GjpError(f"{images_dir}: chips of zoom-{image_index.zoom} tiles, but the graphs are "
                               f"zoom {zoom} (cut the rasters again with `gjp tile RASTER… --zoom {zoom}`)")
    tags = [list(t) for t in table.column("tags").to_pylist()]
    if vocabulary_from is not None:
        vocab = read_vocabulary(vocabulary_from)
    else:
        vocab = Vocabulary.build(tags, min_tag_count)

    # Tiles in name order (stable across runs); entities keep their file order within.
    tile_names = np.array(table.column("tile").to_pylist(), dtype=object)
    order = np.argsort(tile_names, kind="stable")
    table = table.take(order)
    tile_names = tile_names[order]
    tags = [tags[i] for i in order]
    if graphs_dir is None:
        names = np.array(chip_tiles, dtype=object)
        entity_offsets = np.zeros(len(names) + 1, dtype=np.int64)
    else:
        names, first = np.unique(tile_names, return_index=True)
        entity_offsets = np.append(first, len(tile_names)).astype(np.int64)
    zxy = np.array([grid.parse_tile_name(n) for n in names], dtype=np.int32).reshape(-1, 3)
    groups = np.array([grid.group_name(z, x, y) for z, x, y in zxy], dtype=object)

    arrays = {
        "tiles/name": encode_strings(names), "tiles/zxy": zxy, "tiles/group": encode_strings(groups),
        "tiles/entity_offsets": entity_offsets,
        **_entity_arrays(table, tags, vocab),
        **_graph_arrays(table),
    }
    report = PackReport(tiles=len(names), entities=table.num_rows, vocabulary=len(vocab),
                        unknown_tags=int((arrays["entities/tag_ids"] == 0).sum()))
    images = None
    if images_dir is not None:
        images = _Images(image_index, list(names))
        report.images = int(images.has.sum())
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "zoom": zoom, "gjp_version": __version__,
             "command": command_line(), "min_tag_count": min_tag_count,
             "params": json.dumps({"graphs": str(graphs_dir) if graphs_dir else None,
                                   "images": str(images_dir) if images_dir else None,
                                   "min_tag_count": min_tag_count,
                                   "vocabulary_from": str(vocabulary_from) if vocabulary_from else None}),
             "source_steps": json.dumps(steps)}
    write_dataset(output, arrays, vocab, attrs, images, reporter, overwrite)
    return report


def _entity_arrays(table, tags, vocab: Vocabulary) -> dict[str, np.ndarray]:
    kind_code = {k: i for i, k in enumerate(KINDS)}
    type_code = {t: i for i, t in enumerate(OSM_TYPES)}
    counts = np.array([len(t) for t in tags], dtype=np.int64)
    tag_offsets = np.zeros(len(tags) + 1, dtype=np.int64)
    np.cumsum(counts, out=tag_offsets[1:])
    lookup = vocab.lookup
    tag_ids = np.fromiter((lookup(k, v) for t in tags for k, v in t), dtype=np.int32, count=int(counts.sum()))
    # the raw tags too (labels need real values, e.g. maxspeed=30 mph, which the vocabulary
    # may have folded into maxspeed=*), as ids into two string tables
    key_ids, keys = _intern(k for t in tags for k, _ in t)
    value_ids, values = _intern(v for t in tags for _, v in t)
    shape = np.stack([table.column(c).to_numpy() for c in
                      ("min_box_width", "min_box_height", "min_box_area", "min_box_angle")], axis=1)
    min_box = np.asarray(table.column("min_box").combine_chunks().flatten()).reshape(-1, 8)
    return {
        "entities/kind": np.array([kind_code[k] for k in table.column("kind").to_pylist()], dtype=np.uint8),
        "entities/osm_type": np.array([type_code[t] for t in table.column("osm_type").to_pylist()], dtype=np.uint8),
        "entities/osm_id": table.column("osm_id").to_numpy().astype(np.int64),
        "entities/min_box": min_box.astype(np.float32),
        "entities/min_box_shape": shape.astype(np.float32),
        "entities/tag_offsets": tag_offsets,
        "entities/tag_ids": tag_ids,
        "entities/tag_key_ids": key_ids,
        "entities/tag_value_ids": value_ids,
        "strings/keys": encode_strings(keys),
        "strings/values": encode_strings(values),
    }


def _intern(items) -> tuple[np.ndarray, list[str]]:
    """Ids into a sorted table of the distinct strings."""
    items = list(items)
    table = sorted(set(items))
    index = {v: i for i, v in enumerate(table)}
    return np.fromiter((index[v] for v in items), dtype=np.int32, count=len(items)), table


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


class _Images:
    """The chips to pack: which tiles have one, and how to read it (streamed into the file
    one chip at a time, so memory does not grow with the dataset)."""

    def __init__(self, index: _ImageIndex, names: list[str]):
        available = set(index.tiles)
        self.directory, self.size, self.names = index.directory, index.size, names
        self.has = np.array([n in available for n in names], dtype=bool)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        path = self.directory / f"{self.names[i]}.png"
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise GjpError(f"{path}: not a readable image chip ({err})") from None
        if rgba.shape[:2] != (self.size, self.size):
            raise GjpError(f"{path}: {rgba.shape[1]}×{rgba.shape[0]} px, but the index says {self.size} px chips")
        return rgba[:, :, :3], rgba[:, :, 3] > 0

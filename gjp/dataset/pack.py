"""``gjp pack-h5``: the graphs (and image chips) into ``dataset.h5``, the one file every
model reads.

Flat arrays with CSR offsets, never one HDF5 group per tile (which costs an object lookup
per tile and per field): a tile's entities are ``entities/*[o[i]:o[i+1]]`` with
``o = tiles/entity_offsets``, an entity's tag ids, graph nodes and edges likewise through
their own offsets. The layout is in docs/FORMATS.md.

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
from gjp.errors import GjpError
from gjp.geoparquet import list_group_files, read_group_file
from gjp.io import atomic_file, check_output_free, command_line, open_hdf5
from gjp.osm.reader import KINDS, OSM_TYPES
from gjp.ui import QUIET, Reporter

FORMAT = "gjp-dataset"
FORMAT_VERSION = 1
UNKNOWN = "<unk>"
DEFAULT_MIN_TAG_COUNT = 5
IMAGE_SIZE = 224
#: NAIP RGB statistics (DESIGN §1), for normalising chips.
NAIP_MEAN = (0.4692, 0.4768, 0.4254)
NAIP_STD = (0.1064, 0.0799, 0.0815)
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


# --------------------------------------------------------------------------- vocabulary

class Vocabulary:
    """``key=value`` → id, with the ``key=*`` fallback and ``<unk>`` = 0."""

    def __init__(self, entries: list[str], counts: list[int] | None = None):
        if not entries or entries[0] != UNKNOWN:
            raise ValueError("a vocabulary starts with <unk>")
        self.entries = list(entries)
        self.counts = list(counts) if counts is not None else [0] * len(entries)
        self.index = {e: i for i, e in enumerate(self.entries)}

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def build(cls, tag_lists, min_count: int = DEFAULT_MIN_TAG_COUNT) -> "Vocabulary":
        """From an iterable of ``[(key, value), …]`` (one list per entity)."""
        pairs: Counter = Counter()
        for tags in tag_lists:
            pairs.update(f"{k}={v}" for k, v in tags)
        kept: Counter = Counter()
        for pair, n in pairs.items():
            if n >= min_count:
                kept[pair] += n
            else:
                kept[pair.split("=", 1)[0] + "=*"] += n
        ordered = sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([UNKNOWN] + [e for e, _ in ordered], [0] + [n for _, n in ordered])

    def lookup(self, key: str, value: str) -> int:
        i = self.index.get(f"{key}={value}")
        if i is None:
            i = self.index.get(f"{key}=*", 0)
        return i


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


def _image_tiles(images_dir: Path) -> tuple[list[str], int]:
    import pyarrow.parquet as pq

    index = images_dir / "index.parquet"
    if not index.exists():
        raise GjpError(f"{images_dir}: no index.parquet (make it with `gjp tile RASTER… -o {images_dir}`)")
    meta = json.loads((pq.read_schema(index).metadata or {}).get(b"gjp", b"{}"))
    return sorted(pq.read_table(index, columns=["tile"]).column("tile").to_pylist()), int(meta.get("zoom", 16))


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
        chip_tiles, zoom = _image_tiles(Path(images_dir))
        table, steps = _empty_graph_table(), []
    else:
        table, zoom, steps = _read_graphs(Path(graphs_dir), reporter)
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
        "tiles/name": _strings(names), "tiles/zxy": zxy, "tiles/group": _strings(groups),
        "tiles/entity_offsets": entity_offsets,
        **_entity_arrays(table, tags, vocab),
        **_graph_arrays(table),
    }
    report = PackReport(tiles=len(names), entities=table.num_rows, vocabulary=len(vocab),
                        unknown_tags=int((arrays["entities/tag_ids"] == 0).sum()))
    images = None
    if images_dir is not None:
        images = _find_images(Path(images_dir), list(names))
        report.images = int(images.has.sum())
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "zoom": zoom, "gjp_version": __version__,
             "command": command_line(), "min_tag_count": min_tag_count,
             "params": json.dumps({"graphs": str(graphs_dir) if graphs_dir else None,
                                   "images": str(images_dir) if images_dir else None,
                                   "min_tag_count": min_tag_count,
                                   "vocabulary_from": str(vocabulary_from) if vocabulary_from else None}),
             "source_steps": json.dumps(steps)}
    write_dataset(output, arrays, vocab, attrs, images, reporter)
    return report


def _strings(values) -> np.ndarray:
    """UTF-8 strings as a fixed-width byte array (fast to read; no vlen heap)."""
    encoded = [str(v).encode() for v in values]
    return np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1) or 1}")


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
        "strings/keys": _strings(keys),
        "strings/values": _strings(values),
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


@dataclass
class _Images:
    """The chips to pack: which tiles have one, and how to read it (streamed into the file
    one chip at a time, so memory does not grow with the dataset)."""

    directory: Path
    names: list[str]
    has: np.ndarray

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        with Image.open(self.directory / f"{self.names[i]}.png") as im:
            rgba = np.asarray(im.convert("RGBA"))
        return rgba[:, :, :3], rgba[:, :, 3] > 0


def _find_images(images_dir: Path, names: list[str]) -> _Images:
    import pyarrow.parquet as pq

    index_path = images_dir / "index.parquet"
    if not index_path.exists():
        raise GjpError(f"{images_dir}: no index.parquet (make it with `gjp tile RASTER… -o {images_dir}`)")
    meta = json.loads((pq.read_schema(index_path).metadata or {}).get(b"gjp", b"{}"))
    if meta.get("format") != "gjp-images":
        raise GjpError(f"{index_path}: not a gjp image index")
    if int(meta.get("size", IMAGE_SIZE)) != IMAGE_SIZE:
        raise GjpError(f"{images_dir}: chips are {meta.get('size')} px; the dataset stores {IMAGE_SIZE} px chips")
    available = set(pq.read_table(index_path, columns=["tile"]).column("tile").to_pylist())
    return _Images(images_dir, names, np.array([n in available for n in names], dtype=bool))


def write_dataset(output: Path, arrays: dict[str, np.ndarray], vocab: Vocabulary, attrs: dict,
                  images: "_Images | None" = None, reporter: Reporter = QUIET) -> None:
    """Write a dataset file atomically (a temporary name, renamed when complete)."""
    import h5py

    with atomic_file(output) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, data in arrays.items():
            _put(f, name, data)
        f["vocab/tags"] = _strings(vocab.entries)
        f["vocab/counts"] = np.asarray(vocab.counts, dtype=np.int64)
        f["entities/kind"].attrs["names"] = json.dumps(list(KINDS))
        f["entities/osm_type"].attrs["names"] = json.dumps(list(OSM_TYPES))
        f["entities/min_box_shape"].attrs["columns"] = json.dumps(["width", "height", "area", "angle"])
        if images is not None:
            n = len(images.has)
            pixels = f.create_dataset("images/pixels", shape=(n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                                      chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 3), compression="lzf")
            valid = f.create_dataset("images/valid", shape=(n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool,
                                     chunks=(1, IMAGE_SIZE, IMAGE_SIZE), compression="lzf")
            for i in reporter.progress(np.flatnonzero(images.has), desc="packing images", unit=" chip"):
                pixels[i], valid[i] = images.read(int(i))
            f["images/has_image"] = images.has
            f["images"].attrs["mean"] = NAIP_MEAN
            f["images"].attrs["std"] = NAIP_STD


def _put(f, name: str, data: np.ndarray) -> None:
    # ~16 KiB chunks: a tile's slice is a few hundred bytes, and every read decompresses
    # whole chunks, so small chunks keep random access cheap while still compressing
    if len(data) == 0:
        f.create_dataset(name, data=data)
        return
    rows = max(1, min(len(data), 16384 // max(1, data.dtype.itemsize * int(np.prod(data.shape[1:])))))
    f.create_dataset(name, data=data, chunks=(rows, *data.shape[1:]), compression="lzf", shuffle=True)


# --------------------------------------------------------------------------- reading

def open_dataset(path: str | Path, require_images: bool = False):
    """Open a dataset file read-only, checking its format; clear errors otherwise."""
    f = open_hdf5(path, FORMAT, FORMAT_VERSION, "dataset", "gjp pack-h5")
    if require_images and "images" not in f:
        f.close()
        raise GjpError(f"{path}: has no images (pack it with `gjp pack-h5 --images images/`)")
    return f


def decode(strings: np.ndarray) -> list[str]:
    return [b.decode() for b in strings]


def read_vocabulary(path: str | Path) -> Vocabulary:
    with open_dataset(path) as f:
        entries = [b.decode() for b in f["vocab/tags"][()]]
        counts = f["vocab/counts"][()].tolist()
    return Vocabulary(entries, counts)

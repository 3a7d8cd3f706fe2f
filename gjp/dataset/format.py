"""The ``dataset.h5`` format, in one place: its constants, the tag vocabulary, writing a
file, and opening one with every array checked. Training code imports this module (and
h5py, numpy) only: none of the preprocessing stack (pyosmium, numba, shapely, pyarrow).

Flat arrays with CSR offsets, never one HDF5 group per tile: a tile's entities are
``entities/*[o[i]:o[i+1]]`` with ``o = tiles/entity_offsets``; an entity's tag ids, graph
nodes and edges likewise through their own offsets. docs/FORMATS.md lists every array.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from gjp.errors import GjpError
from gjp.io import check_pending, open_hdf5, require_datasets
from gjp.kinds import KINDS, OSM_TYPES

FORMAT = "gjp-dataset"
FORMAT_VERSION = 1
MADE_BY = "gjp pack-h5"
UNKNOWN = "<unk>"
DEFAULT_MIN_TAG_COUNT = 5
#: NAIP RGB statistics (docs/FORMATS.md), for normalising chips; stored with the images too.
NAIP_MEAN = (0.4692, 0.4768, 0.4254)
NAIP_STD = (0.1064, 0.0799, 0.0815)

#: Arrays by the table they index into: name → what its first dimension counts.
_ARRAYS = {
    "tiles/name": "tiles", "tiles/zxy": "tiles", "tiles/group": "tiles", "tiles/entity_offsets": "tiles+1",
    "entities/kind": "entities", "entities/osm_type": "entities", "entities/osm_id": "entities",
    "entities/min_box": "entities", "entities/min_box_shape": "entities", "entities/tag_offsets": "entities+1",
    "entities/tag_ids": "tags", "entities/tag_key_ids": "tags", "entities/tag_value_ids": "tags",
    "strings/keys": None, "strings/values": None,
    "graph/node_offsets": "entities+1", "graph/nodes": "nodes", "graph/node_part": "nodes",
    "graph/geometry_edge_offsets": "entities+1", "graph/geometry_edges": "geometry_edges",
    "graph/visibility_edge_offsets": "entities+1", "graph/visibility_edges": "visibility_edges",
    "vocab/tags": None, "vocab/counts": None,
}
#: CSR offsets → the array whose length their last value must be.
_OFFSETS = {"tiles/entity_offsets": "entities/kind", "entities/tag_offsets": "entities/tag_ids",
            "graph/node_offsets": "graph/nodes", "graph/geometry_edge_offsets": "graph/geometry_edges",
            "graph/visibility_edge_offsets": "graph/visibility_edges"}


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
    def build(cls, tag_lists, min_count: int = DEFAULT_MIN_TAG_COUNT) -> Vocabulary:
        """From an iterable of ``[(key, value), …]`` (one list per entity)."""
        pairs: Counter = Counter()
        for tags in tag_lists:
            pairs.update(f"{k}={v}" for k, v in tags)
        return cls.from_counts(pairs, min_count)

    @classmethod
    def from_counts(cls, pairs: Counter, min_count: int = DEFAULT_MIN_TAG_COUNT) -> Vocabulary:
        """From how many times each ``key=value`` was seen (counts merged from any number
        of files: the result depends on the totals only, not on the order)."""
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


# --------------------------------------------------------------------------- writing

def encode_strings(values) -> np.ndarray:
    """UTF-8 strings as a fixed-width byte array (fast to read; no vlen heap)."""
    encoded = [str(v).encode() for v in values]
    return np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1) or 1}")


def decode(strings: np.ndarray) -> list[str]:
    return [b.decode() for b in strings]


#: The dtype and row shape of every per-row array; tile names and groups get the width
#: of the largest name at the dataset's zoom (:func:`name_width`).
_SCHEMA = {
    "tiles/name": (None, ()), "tiles/zxy": (np.int32, (3,)), "tiles/group": (None, ()),
    "tiles/entity_offsets": (np.int64, ()),
    "entities/kind": (np.uint8, ()), "entities/osm_type": (np.uint8, ()), "entities/osm_id": (np.int64, ()),
    "entities/min_box": (np.float32, (8,)), "entities/min_box_shape": (np.float32, (4,)),
    "entities/tag_offsets": (np.int64, ()), "entities/tag_ids": (np.int32, ()),
    "entities/tag_key_ids": (np.int32, ()), "entities/tag_value_ids": (np.int32, ()),
    "graph/node_offsets": (np.int64, ()), "graph/nodes": (np.float32, (2,)), "graph/node_part": (np.int32, ()),
    "graph/geometry_edge_offsets": (np.int64, ()), "graph/geometry_edges": (np.int32, (2,)),
    "graph/visibility_edge_offsets": (np.int64, ()), "graph/visibility_edges": (np.int32, (2,)),
}
#: Rows buffered before they are written: a block of about this many entities (and their
#: tags, vertices, edges) is all the writer holds, whatever the dataset's size.
BLOCK_ENTITIES = 1 << 16


def name_width(zoom: int) -> int:
    """Bytes of the longest tile name at ``zoom`` (``16_65535_65535``): a fixed width
    known before the first tile, so names can be appended block by block."""
    return max(len(f"{zoom}_{2**zoom - 1}_{2**zoom - 1}"), 1)


class DatasetWriter:
    """Writes a dataset into an open HDF5 file block by block, so memory is bounded by
    :data:`BLOCK_ENTITIES` and not by the dataset. :meth:`append` takes the arrays of
    some tiles with *local* CSR offsets (each starting at 0); the writer rebases them,
    buffers, and flushes into resizable chunked arrays. :meth:`finish` writes the string
    tables, the vocabulary and the attributes that need the whole dataset."""

    def __init__(self, f, zoom: int, image_size: int | None = None, block_entities: int | None = None):
        self.f, self.block_entities = f, block_entities or BLOCK_ENTITIES
        width = name_width(zoom)
        self.tiles = 0
        self._items = {name: 0 for name in _SCHEMA}     # rows written or buffered per array
        self._buffer: dict[str, list] = {name: [] for name in _SCHEMA}
        self._buffered_entities = 0
        for name, (dtype, shape) in _SCHEMA.items():
            dtype = np.dtype(f"S{width}") if dtype is None else np.dtype(dtype)
            row_bytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            # ~16 KiB chunks: a tile's slice is a few hundred bytes, and every read
            # decompresses whole chunks, so small chunks keep random access cheap
            rows = max(1, 16384 // row_bytes)
            initial = 1 if name in _OFFSETS else 0   # offsets start with their 0
            f.create_dataset(name, shape=(initial, *shape), maxshape=(None, *shape), dtype=dtype,
                             chunks=(rows, *shape), compression="lzf", shuffle=True)
        self.pixels = self.valid = None
        if image_size is not None:
            s = int(image_size)
            self.pixels = f.create_dataset("images/pixels", shape=(0, s, s, 3), maxshape=(None, s, s, 3),
                                           dtype=np.uint8, chunks=(1, s, s, 3), compression="lzf")
            self.valid = f.create_dataset("images/valid", shape=(0, s, s), maxshape=(None, s, s), dtype=bool,
                                          chunks=(1, s, s), compression="lzf")
            self._has_image = f.create_dataset("images/has_image", shape=(0,), maxshape=(None,), dtype=bool,
                                               chunks=(16384,))

    def append(self, block: dict[str, np.ndarray], images=None) -> None:
        """Add the tiles of ``block`` (every array of the format but the string tables and
        the vocabulary; offsets local). ``images``, with an image size, is a list (one per
        tile of the block) of ``(rgb, valid)`` or ``None``; chips are written at once."""
        n = len(block["tiles/name"])
        base = {offsets: self._items[items] for offsets, items in _OFFSETS.items()}
        for name in _SCHEMA:
            data = block[name]
            if name in _OFFSETS:  # local offsets → absolute ones, past what came before
                data = np.asarray(data[1:], dtype=np.int64) + base[name]
            self._buffer[name].append(data)
            self._items[name] += len(data)
        self._buffered_entities += len(block["entities/kind"])
        if self.pixels is not None:
            self._write_images(n, images)
        self.tiles += n
        if self._buffered_entities >= self.block_entities:
            self.flush()

    def _write_images(self, n: int, images) -> None:
        start = self.tiles
        for ds in (self.pixels, self.valid, self._has_image):
            ds.resize(start + n, axis=0)
        has = np.zeros(n, dtype=bool)
        for i, chip in enumerate(images or [None] * n):
            if chip is not None:
                check_pending(self.f)
                self.pixels[start + i], self.valid[start + i] = chip
                has[i] = True
        self._has_image[start:start + n] = has

    def flush(self) -> None:
        for name, parts in self._buffer.items():
            if not parts:
                continue
            ds = self.f[name]
            data = np.concatenate(parts).astype(ds.dtype, copy=False)
            if len(data):
                start = ds.shape[0]
                ds.resize(start + len(data), axis=0)
                ds[start:] = data
            parts.clear()
        self._buffered_entities = 0
        check_pending(self.f)

    def finish(self, vocab: Vocabulary, keys: list[str], values: list[str], attrs: dict) -> None:
        self.flush()
        f = self.f
        for key, value in attrs.items():
            f.attrs[key] = value
        f["strings/keys"] = encode_strings(keys)
        f["strings/values"] = encode_strings(values)
        f["vocab/tags"] = encode_strings(vocab.entries)
        f["vocab/counts"] = np.asarray(vocab.counts, dtype=np.int64)
        f["entities/kind"].attrs["names"] = json.dumps(list(KINDS))
        f["entities/osm_type"].attrs["names"] = json.dumps(list(OSM_TYPES))
        f["entities/min_box_shape"].attrs["columns"] = json.dumps(["width", "height", "area", "angle"])
        if self.pixels is not None:
            f["images"].attrs["mean"] = NAIP_MEAN
            f["images"].attrs["std"] = NAIP_STD


# --------------------------------------------------------------------------- reading

def open_dataset(path: str | Path, require_images: bool = False):
    """Open a dataset file read-only, checking its format, that every array is there with
    consistent lengths and offsets; clear errors otherwise."""
    f = open_hdf5(path, FORMAT, FORMAT_VERSION, "dataset", MADE_BY)
    try:
        check_dataset(f, path)
        if require_images and "images" not in f:
            raise GjpError(f"{path}: has no images (pack it with `gjp pack-h5 --images images/`)")
    except BaseException:
        f.close()
        raise
    return f


def check_dataset(f, path: str | Path) -> None:
    """Shapes and offsets only (no data is read beyond each offsets array's last value)."""
    require_datasets(f, path, "dataset", _ARRAYS)
    n = {"tiles": len(f["tiles/name"]), "entities": len(f["entities/kind"]), "tags": len(f["entities/tag_ids"]),
         "nodes": len(f["graph/nodes"]), "geometry_edges": len(f["graph/geometry_edges"]),
         "visibility_edges": len(f["graph/visibility_edges"])}
    for name, counts in _ARRAYS.items():
        if counts is None:
            continue
        want = n[counts.removesuffix("+1")] + counts.endswith("+1")
        if f[name].shape[0] != want:
            raise GjpError(f"{path}: damaged dataset: {name} has {f[name].shape[0]} rows, expected {want}")
    for offsets, items in _OFFSETS.items():
        last = int(f[offsets][-1]) if len(f[offsets]) else 0
        if last != len(f[items]):
            raise GjpError(f"{path}: damaged dataset: {offsets} ends at {last}, but {items} has {len(f[items])} rows")
    if "images" in f:
        require_datasets(f, path, "dataset", ("images/pixels", "images/valid", "images/has_image"))
        shape = f["images/pixels"].shape
        if len(shape) != 4 or shape[0] != n["tiles"] or shape[3] != 3 or len(f["images/has_image"]) != n["tiles"]:
            raise GjpError(f"{path}: damaged dataset: images/pixels has shape {shape} for {n['tiles']} tiles")


def read_tiles(f, start: int, stop: int) -> dict[str, np.ndarray]:
    """Tiles ``start:stop`` of an open dataset as a block of :class:`DatasetWriter` (every
    per-row array, offsets local): contiguous slices, so a block costs one read per array."""
    block = {}
    entities = None   # the block's entity range, once the tiles' offsets are read
    for offsets, items in _OFFSETS.items():  # tiles → entities first, then the entities' items
        a, b = (start, stop) if offsets.startswith("tiles/") else entities
        o = f[offsets][a:b + 1]
        block[offsets] = o - o[0]
        first, last = int(o[0]), int(o[-1])
        if entities is None:
            entities = (first, last)
        for name, counts in _ARRAYS.items():  # every array that counts what these offsets count
            if counts == _ARRAYS[items] and name in _SCHEMA and name not in _OFFSETS:
                block[name] = f[name][first:last]
    for name in ("tiles/name", "tiles/zxy", "tiles/group"):
        block[name] = f[name][start:stop]
    return block


#: Shard files of ``pack-h5 --shard-tiles``: ``DIR/dataset-00000.h5``, …
SHARD_NAME = "dataset-{:05d}.h5"
_SHARD_FILE = re.compile(r"dataset-(\d{5})\.h5")


def dataset_files(path: str | Path) -> list[Path]:
    """The files of a dataset: ``path`` itself, or, for a directory of shards, its shards
    in order, checked to be all there (each records its index and the count)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    shards = sorted(p for p in path.iterdir() if _SHARD_FILE.fullmatch(p.name))
    if not shards:
        raise GjpError(f"{path}: a directory without dataset shards (dataset-00000.h5, …; "
                       "made by `gjp pack-h5 --shard-tiles N`)")
    for i, shard in enumerate(shards):
        with open_dataset(shard) as f:
            try:
                info = json.loads(f.attrs.get("shard", "null"))
                index, count = int(info["index"]), int(info["count"])
            except (TypeError, KeyError, ValueError):
                raise GjpError(f"{shard}: not a shard of a dataset (no shard attribute)") from None
        if shard.name != SHARD_NAME.format(i) or index != i or count != len(shards):
            raise GjpError(f"{path}: incomplete shards: {len(shards)} files, but {shard.name} is shard {index} "
                           f"of {count} (pack the dataset again)")
    return shards


def companion_path(dataset: str | Path, kind: str) -> Path:
    """Where a cache derived from ``dataset`` lives, beside it: ``dir/dataset.h5`` →
    ``dir/dataset.<kind>.h5`` (the frozen encoders' token caches)."""
    dataset = Path(dataset)
    stem = dataset.name[:-3] if dataset.name.endswith(".h5") else dataset.name
    return dataset.with_name(f"{stem}.{kind}.h5")


def image_size(f) -> int | None:
    """The chip width of an open dataset (``None`` without images)."""
    return int(f["images/pixels"].shape[1]) if "images" in f else None


def read_vocabulary(path: str | Path) -> Vocabulary:
    with open_dataset(path) as f:
        entries = decode(f["vocab/tags"][()])
        counts = f["vocab/counts"][()].tolist()
    if not entries or entries[0] != UNKNOWN:
        raise GjpError(f"{path}: damaged dataset: the vocabulary does not start with {UNKNOWN}")
    return Vocabulary(entries, counts)

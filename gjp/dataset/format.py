"""The ``dataset.h5`` format, in one place: its constants, the tag vocabulary, writing a
file, and opening one with every array checked. Training code imports this module (and
h5py, numpy) only: none of the preprocessing stack (pyosmium, numba, shapely, pyarrow).

Flat arrays with CSR offsets, never one HDF5 group per tile: a tile's entities are
``entities/*[o[i]:o[i+1]]`` with ``o = tiles/entity_offsets``; an entity's tag ids, graph
nodes and edges likewise through their own offsets. docs/FORMATS.md lists every array.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from gjp.errors import GjpError
from gjp.io import check_pending, hdf5_output, open_hdf5, require_datasets
from gjp.kinds import KINDS, OSM_TYPES
from gjp.ui import QUIET, Reporter

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


def write_dataset(output: Path, arrays: dict[str, np.ndarray], vocab: Vocabulary, attrs: dict,
                  images=None, reporter: Reporter = QUIET, overwrite: bool = False) -> None:
    """Write a dataset file atomically. ``images``, when given, has ``has`` (a mask over
    the tiles), ``size`` (chip width in pixels) and ``read(i) -> (rgb, valid)``; chips are
    streamed in one at a time, so memory does not grow with the dataset."""
    with hdf5_output(output, overwrite, track_order=True) as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, data in arrays.items():
            _put(f, name, data)
        f["vocab/tags"] = encode_strings(vocab.entries)
        f["vocab/counts"] = np.asarray(vocab.counts, dtype=np.int64)
        f["entities/kind"].attrs["names"] = json.dumps(list(KINDS))
        f["entities/osm_type"].attrs["names"] = json.dumps(list(OSM_TYPES))
        f["entities/min_box_shape"].attrs["columns"] = json.dumps(["width", "height", "area", "angle"])
        if images is not None:
            n, size = len(images.has), int(images.size)
            pixels = f.create_dataset("images/pixels", shape=(n, size, size, 3), dtype=np.uint8,
                                      chunks=(1, size, size, 3), compression="lzf")
            valid = f.create_dataset("images/valid", shape=(n, size, size), dtype=bool,
                                     chunks=(1, size, size), compression="lzf")
            for i in reporter.progress(np.flatnonzero(images.has), desc="packing images", unit=" chip"):
                check_pending(f)
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

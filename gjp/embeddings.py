"""Embedding files (``embeddings/NAME.h5``): one vector per tile, optionally one per entity.
Written block by block (:class:`EmbeddingsWriter`) and read whole (:func:`read_embeddings`)
or streamed (:func:`open_embeddings`), so neither side needs every vector in memory.

| dataset | shape | meaning |
|---|---|---|
| ``tiles/name`` | [N] bytes | tile names, in the order of the source dataset |
| ``tiles/vectors`` | [N, D] float32 | the tile embeddings |
| ``entities/offsets`` | [N+1] int64 | CSR: tile → its entities (optional) |
| ``entities/vectors`` | [E, De] float32 | entity embeddings (optional) |
| ``entities/osm_type``, ``entities/osm_id`` | [E] | which OSM object each entity is |

Attributes: ``format`` = ``gjp-embeddings``, ``format_version``, ``model``, ``dim``,
``dataset``, ``task``, ``params`` (JSON), ``gjp_version``, ``command``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.errors import GjpError
from gjp.io import check_pending, command_line, hdf5_output, open_hdf5, require_datasets

FORMAT = "gjp-embeddings"
FORMAT_VERSION = 1
MADE_BY = "gjp embed --model …"


@dataclass
class Embeddings:
    names: list[str]
    vectors: np.ndarray                     # [N, D]
    attrs: dict
    entity_offsets: np.ndarray | None = None
    entity_vectors: np.ndarray | None = None
    entity_osm_type: np.ndarray | None = None
    entity_osm_id: np.ndarray | None = None

    @property
    def model(self) -> str:
        return str(self.attrs.get("model", "?"))

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


#: Rows of a storage chunk of ``tiles/vectors`` and ``entities/vectors``; the writer buffers
#: up to this many rows so that every chunk is compressed once.
CHUNK_ROWS = 4096
#: Chunk cache of a streamed reader: none. Reads are whole windows of chunks, and HDF5's
#: cache was seen to keep every chunk it had decompressed (12 MiB each for 768-dim
#: vectors) far past its byte limit, so memory grew with the file.
READ_CACHE_BYTES = 0


def write_embeddings(path: str | Path, names: list[str], vectors: np.ndarray, *, model: str, dataset: str,
                     task: str | None = None, params: dict | None = None, entity_offsets=None,
                     entity_vectors=None, entity_osm_type=None, entity_osm_id=None,
                     overwrite: bool = False) -> None:
    """An embeddings file from whole arrays (one block of :class:`EmbeddingsWriter`)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    entities = None if entity_vectors is None else len(entity_vectors)
    with hdf5_output(path, overwrite) as f:
        writer = EmbeddingsWriter(f, path, np.array([n.encode() for n in names], dtype=bytes), model=model,
                                  dataset=dataset, task=task, params=params, entities=entities)
        counts = None if entity_offsets is None else np.diff(np.asarray(entity_offsets, dtype=np.int64))
        writer.append(vectors, counts, entity_vectors, entity_osm_type, entity_osm_id)
        writer.finish()


class EmbeddingsWriter:
    """Writes ``embeddings/NAME.h5`` block by block into ``f``, an HDF5 file open for
    writing (from :func:`gjp.io.hdf5_output`, so a failure leaves no file): the names
    first, then the vectors of consecutive tiles (and their entities) with each
    :meth:`append`. Datasets are pre-sized (``names`` and ``entities`` say how many rows),
    created at the first block (it tells the dimensions); every block is checked finite.
    Memory: one block plus at most a storage chunk of buffered rows."""

    def __init__(self, f, path: str | Path, names: np.ndarray, *, model: str, dataset: str | Path,
                 task: str | None = None, params: dict | None = None, entities: int | None = None):
        self.f, self.path, self.model = f, path, model
        self.tiles = len(names)
        self.entities = entities
        self.dim = None
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
                        "dataset": str(dataset), "task": task or "",
                        "params": json.dumps(params or {}, sort_keys=True), "gjp_version": __version__,
                        "command": command_line()})
        names = np.asarray(names, dtype=bytes)
        width = max(int(np.char.str_len(names).max()) if len(names) else 1, 1)
        f["tiles/name"] = names.astype(f"S{width}")
        self._tile_rows = self._entity_rows = 0      # rows appended so far
        self._tile_buffer, self._entity_buffer = _RowBuffer(), _RowBuffer()
        self._offsets = self._osm_type = self._osm_id = None

    def append(self, vectors, entity_counts=None, entity_vectors=None, entity_osm_type=None,
               entity_osm_id=None) -> None:
        """The vectors of the next ``len(vectors)`` tiles and, for a file with entities,
        how many entities each has and theirs (in order)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        self._check_finite("tile", vectors)
        if self.dim is None:
            self._create(vectors.shape[1], None if entity_vectors is None else np.asarray(entity_vectors).shape[1])
        if self._tile_rows + len(vectors) > self.tiles:
            raise ValueError(f"{self.path}: more tile vectors than the {self.tiles} names")
        self._tile_buffer.add(vectors)
        if self.entities is not None:
            ev = np.asarray(entity_vectors, dtype=np.float32)
            self._check_finite("entity", ev)
            counts = np.asarray(entity_counts, dtype=np.int64)
            if len(counts) != len(vectors) or int(counts.sum()) != len(ev):
                raise ValueError(f"{self.path}: entity counts do not match the block's vectors")
            e0 = self._entity_rows
            self._offsets[self._tile_rows + 1:self._tile_rows + 1 + len(counts)] = e0 + np.cumsum(counts)
            self._osm_type[e0:e0 + len(ev)] = np.asarray(entity_osm_type, dtype=np.uint8)
            self._osm_id[e0:e0 + len(ev)] = np.asarray(entity_osm_id, dtype=np.int64)
            self._entity_buffer.add(ev)
            self._entity_rows += len(ev)
        self._tile_rows += len(vectors)
        self._flush(final=False)
        check_pending(self.f)

    def finish(self) -> None:
        """Write what is buffered; every tile (and entity) must have been appended."""
        if self.dim is None:
            raise ValueError(f"{self.path}: no vectors were appended")
        self._flush(final=True)
        if self._tile_rows != self.tiles or (self.entities is not None and self._entity_rows != self.entities):
            raise ValueError(f"{self.path}: {self._tile_rows} of {self.tiles} tiles appended")

    def _create(self, dim: int, entity_dim: int | None) -> None:
        f = self.f
        self.dim = dim
        f.attrs["dim"] = int(dim)
        self._vectors = f.create_dataset("tiles/vectors", shape=(self.tiles, dim), dtype=np.float32,
                                         chunks=(min(self.tiles, CHUNK_ROWS) or 1, dim), compression="lzf")
        if self.entities is not None:
            n = self.entities
            self._offsets = f.create_dataset("entities/offsets", shape=(self.tiles + 1,), dtype=np.int64)
            self._offsets[0] = 0
            self._entity_vectors = f.create_dataset("entities/vectors", shape=(n, entity_dim), dtype=np.float32,
                                                    chunks=(min(n, CHUNK_ROWS) or 1, entity_dim),
                                                    compression="lzf")
            self._osm_type = f.create_dataset("entities/osm_type", shape=(n,), dtype=np.uint8)
            self._osm_id = f.create_dataset("entities/osm_id", shape=(n,), dtype=np.int64)

    def _flush(self, final: bool) -> None:
        self._tile_buffer.write_to(self._vectors, final)
        if self.entities is not None:
            self._entity_buffer.write_to(self._entity_vectors, final)

    def _check_finite(self, name: str, values: np.ndarray) -> None:
        if not np.isfinite(values).all():
            raise GjpError(f"{self.path}: {self.model} produced {name} vectors that are not finite (NaN or inf); "
                           "nothing was written")


class _RowBuffer:
    """Rows waiting to be written, so that writes cover whole storage chunks."""

    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.rows = 0       # buffered
        self.written = 0    # rows of the dataset already written

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self.parts.append(rows)
            self.rows += len(rows)

    def write_to(self, dataset, final: bool) -> None:
        chunk = dataset.chunks[0]
        take = self.rows if final else self.rows - (self.written + self.rows) % chunk
        if take <= 0:
            return
        pending = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        dataset[self.written:self.written + take] = pending[:take]
        self.parts = [pending[take:].copy()] if take < len(pending) else []  # not a view of all pending
        self.written += take
        self.rows -= take


def read_embeddings(path: str | Path, entities: bool = False) -> Embeddings:
    """An embeddings file read whole, checked: the structure as :func:`open_embeddings`
    checks it, and finite values (a NaN vector would give NaN distances and MAEs
    downstream, silently)."""
    with open_embeddings(path, entities) as emb:
        vectors = emb.tiles.source[()]
        _check_vectors(path, "tiles/vectors", vectors, len(emb.names))
        out = Embeddings([b.decode("utf-8", "replace") for b in emb.names], vectors, emb.attrs)
        if entities:
            out.entity_offsets = emb.entity_offsets
            out.entity_vectors = emb.entities.source[()]
            _check_vectors(path, "entities/vectors", out.entity_vectors, len(out.entity_vectors))
            out.entity_osm_type = emb.entity_osm_type[()]
            out.entity_osm_id = emb.entity_osm_id[()]
    return out


_ENTITY_DATASETS = ("entities/offsets", "entities/vectors", "entities/osm_type", "entities/osm_id")


def _check_vectors(path, name: str, vectors: np.ndarray, rows: int) -> None:
    _check_shape(path, name, vectors, rows)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise GjpError(f"{path}: {int(bad.sum())} of {rows} vectors in {name} are not finite (NaN or inf); "
                       "make the embeddings again")


# --------------------------------------------------------------------------- streamed reading

class VectorRows:
    """The rows of a 2-D float array, read a block at a time: an HDF5 dataset (rows come
    from the file as they are asked for, each block checked finite) or an array in memory.
    What :func:`gjp.evaluate.knn.search` scans, so memory does not grow with the rows."""

    def __init__(self, source, path: str | Path | None = None, name: str = "vectors"):
        self.source, self.path, self.name = source, path, name
        self.in_memory = isinstance(source, np.ndarray)
        #: rows read at once when picking scattered rows (a storage chunk, at least 1024)
        self.window = max(1024, (source.chunks or (1024,))[0]) if not self.in_memory else len(source)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def dim(self) -> int:
        return int(self.source.shape[1])

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32."""
        if self.in_memory:
            return self.source[start:stop]
        values = np.asarray(self.source[start:stop], dtype=np.float32)
        if not np.isfinite(values).all():
            self._fail_not_finite()
        return values

    def take(self, rows) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as float32 ``[len(rows), dim]``:
        each window of the file that holds some of them is read once."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.in_memory:
            return self.source[rows]
        unique = np.unique(rows)
        out = np.empty((len(unique), self.dim), dtype=np.float32)
        i = 0
        while i < len(unique):
            first = int(unique[i])
            j = int(np.searchsorted(unique, first + self.window, side="left"))
            out[i:j] = self.block(first, int(unique[j - 1]) + 1)[unique[i:j] - first]
            i = j
        return out[np.searchsorted(unique, rows)]

    def blocks(self, rows: int):
        """``(start, block)`` over all rows, ``rows`` at a time."""
        for start in range(0, len(self), rows):
            yield start, self.block(start, min(start + rows, len(self)))

    def check_finite(self) -> None:
        """A pass over every row: a one-line error if any is not finite (a damaged file
        is reported before a query's own problems, as when the file was read whole)."""
        self._fail_not_finite(only_if_bad=True)

    def _fail_not_finite(self, only_if_bad: bool = False) -> None:
        bad = 0
        for start in range(0, len(self), self.window):
            values = self.source[start:start + self.window]
            bad += int((~np.isfinite(values).all(axis=1)).sum())
        if only_if_bad and not bad:
            return
        raise GjpError(f"{self.path}: {bad} of {len(self)} vectors in {self.name} are not finite (NaN or inf); "
                       "make the embeddings again")


@dataclass
class EmbeddingsFile:
    """An embeddings file open for streaming (:func:`open_embeddings`): the names, the
    attributes and the entity offsets in memory, the vectors read as they are needed."""
    path: Path
    names: np.ndarray                       # [N] bytes
    attrs: dict
    tiles: VectorRows
    handle: object
    entity_offsets: np.ndarray | None = None
    entities: VectorRows | None = None
    entity_osm_type: object = None          # the HDF5 datasets, read by slices
    entity_osm_id: object = None

    @property
    def model(self) -> str:
        return str(self.attrs.get("model", "?"))

    def name(self, i: int) -> str:
        return self.names[i].decode("utf-8", "replace")

    def find(self, name: str) -> int | None:
        """The row of tile ``name``, or None."""
        hits = np.flatnonzero(self.names == name.encode())
        return int(hits[0]) if len(hits) else None

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_embeddings(path: str | Path, entities: bool = False) -> EmbeddingsFile:
    """An embeddings file with the checks of :func:`read_embeddings` on everything but the
    vectors' values, which are checked finite block by block as they are read."""
    path = Path(path)
    f = open_hdf5(path, FORMAT, FORMAT_VERSION, "embeddings file", MADE_BY)
    try:
        require_datasets(f, path, "embeddings file", ("tiles/name", "tiles/vectors"))
        names = np.asarray(f["tiles/name"][()], dtype=bytes)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        vectors = _streamed(f, "tiles/vectors")
        _check_shape(path, "tiles/vectors", vectors, len(names))
        if len(np.unique(names)) != len(names):
            raise GjpError(f"{path}: damaged embeddings file: tile names repeat")
        out = EmbeddingsFile(path, names, attrs, VectorRows(vectors, path, "tiles/vectors"), f)
        if entities:
            if "entities" not in f:
                raise GjpError(f"{path}: has no entity embeddings (model {out.model}); "
                               "tagpool writes them")
            require_datasets(f, path, "embeddings file", _ENTITY_DATASETS)
            offsets = f["entities/offsets"][()]
            entity_vectors = _streamed(f, "entities/vectors")
            n_entities = len(entity_vectors)
            if (len(offsets) != len(names) + 1 or offsets[0] != 0 or offsets[-1] != n_entities
                    or (np.diff(offsets) < 0).any()):
                raise GjpError(f"{path}: damaged embeddings file: entities/offsets do not index "
                               f"{n_entities} entities of {len(names)} tiles")
            _check_shape(path, "entities/vectors", entity_vectors, n_entities)
            if len(f["entities/osm_type"]) != n_entities or len(f["entities/osm_id"]) != n_entities:
                raise GjpError(f"{path}: damaged embeddings file: entity ids and vectors differ in number")
            out.entity_offsets = offsets
            out.entities = VectorRows(entity_vectors, path, "entities/vectors")
            out.entity_osm_type, out.entity_osm_id = f["entities/osm_type"], f["entities/osm_id"]
    except BaseException:
        f.close()
        raise
    return out


def _streamed(f, name: str):
    """Dataset ``name`` of ``f`` with a chunk cache of :data:`READ_CACHE_BYTES`."""
    import h5py

    access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    access.set_chunk_cache(521, READ_CACHE_BYTES, 1.0)
    return h5py.Dataset(h5py.h5d.open(f.id, name.encode(), dapl=access))


def _check_shape(path, name: str, vectors, rows: int) -> None:
    if vectors.ndim != 2 or len(vectors) != rows:
        raise GjpError(f"{path}: damaged embeddings file: {name} has shape {vectors.shape}, expected "
                       f"{rows} rows of vectors")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise GjpError(f"{path}: damaged embeddings file: {name} holds {vectors.dtype}, not floats")

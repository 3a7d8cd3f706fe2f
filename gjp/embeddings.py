"""Embedding files (``embeddings/NAME.h5``): one vector per tile, optionally one per entity.

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
from gjp.io import command_line, hdf5_output, open_hdf5, require_datasets

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


def write_embeddings(path: str | Path, names: list[str], vectors: np.ndarray, *, model: str, dataset: str,
                     task: str | None = None, params: dict | None = None, entity_offsets=None,
                     entity_vectors=None, entity_osm_type=None, entity_osm_id=None,
                     overwrite: bool = False) -> None:
    vectors = np.asarray(vectors, dtype=np.float32)
    for name, values in (("tile", vectors), ("entity", entity_vectors)):
        if values is not None and not np.isfinite(values).all():
            raise GjpError(f"{path}: {model} produced {name} vectors that are not finite (NaN or inf); "
                           "nothing was written")
    with hdf5_output(path, overwrite) as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
                        "dim": int(vectors.shape[1]), "dataset": str(dataset), "task": task or "",
                        "params": json.dumps(params or {}, sort_keys=True), "gjp_version": __version__,
                        "command": command_line()})
        encoded = [n.encode() for n in names]
        f["tiles/name"] = np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1)}")
        f.create_dataset("tiles/vectors", data=vectors, chunks=(min(len(vectors), 4096) or 1, vectors.shape[1]),
                         compression="lzf")
        if entity_vectors is not None:
            ev = np.asarray(entity_vectors, dtype=np.float32)
            f["entities/offsets"] = np.asarray(entity_offsets, dtype=np.int64)
            f.create_dataset("entities/vectors", data=ev, chunks=(min(len(ev), 4096) or 1, ev.shape[1]),
                             compression="lzf")
            f["entities/osm_type"] = np.asarray(entity_osm_type, dtype=np.uint8)
            f["entities/osm_id"] = np.asarray(entity_osm_id, dtype=np.int64)


def read_embeddings(path: str | Path, entities: bool = False) -> Embeddings:
    """An embeddings file, checked: as many vectors as names, unique names, finite values
    (a NaN vector would give NaN distances and MAEs downstream, silently)."""
    with open_hdf5(path, FORMAT, FORMAT_VERSION, "embeddings file", MADE_BY) as f:
        require_datasets(f, path, "embeddings file", ("tiles/name", "tiles/vectors"))
        names = [b.decode("utf-8", "replace") for b in f["tiles/name"][()]]
        vectors = f["tiles/vectors"][()]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        _check_vectors(path, "tiles/vectors", vectors, len(names))
        if len(set(names)) != len(names):
            raise GjpError(f"{path}: damaged embeddings file: tile names repeat")
        out = Embeddings(names, vectors, attrs)
        if entities:
            if "entities" not in f:
                raise GjpError(f"{path}: has no entity embeddings (model {out.model}); "
                               "tagpool writes them")
            require_datasets(f, path, "embeddings file", _ENTITY_DATASETS)
            out.entity_offsets = f["entities/offsets"][()]
            out.entity_vectors = f["entities/vectors"][()]
            out.entity_osm_type = f["entities/osm_type"][()]
            out.entity_osm_id = f["entities/osm_id"][()]
            n_entities = len(out.entity_vectors)
            offsets = out.entity_offsets
            if (len(offsets) != len(names) + 1 or offsets[0] != 0 or offsets[-1] != n_entities
                    or (np.diff(offsets) < 0).any()):
                raise GjpError(f"{path}: damaged embeddings file: entities/offsets do not index "
                               f"{n_entities} entities of {len(names)} tiles")
            _check_vectors(path, "entities/vectors", out.entity_vectors, n_entities)
            if len(out.entity_osm_type) != n_entities or len(out.entity_osm_id) != n_entities:
                raise GjpError(f"{path}: damaged embeddings file: entity ids and vectors differ in number")
    return out


_ENTITY_DATASETS = ("entities/offsets", "entities/vectors", "entities/osm_type", "entities/osm_id")


def _check_vectors(path, name: str, vectors: np.ndarray, rows: int) -> None:
    if vectors.ndim != 2 or len(vectors) != rows:
        raise GjpError(f"{path}: damaged embeddings file: {name} has shape {vectors.shape}, expected "
                       f"{rows} rows of vectors")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise GjpError(f"{path}: damaged embeddings file: {name} holds {vectors.dtype}, not floats")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise GjpError(f"{path}: {int(bad.sum())} of {rows} vectors in {name} are not finite (NaN or inf); "
                       "make the embeddings again")

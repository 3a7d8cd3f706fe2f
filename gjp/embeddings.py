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
from gjp.io import command_line, hdf5_output, open_hdf5

FORMAT = "gjp-embeddings"
FORMAT_VERSION = 1


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
    with open_hdf5(path, FORMAT, FORMAT_VERSION, "embeddings file", "gjp embed --model …") as f:
        out = Embeddings([b.decode() for b in f["tiles/name"][()]], f["tiles/vectors"][()],
                         {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()})
        if entities:
            if "entities" not in f:
                raise GjpError(f"{path}: has no entity embeddings (model {out.model}); "
                               "tagpool writes them")
            out.entity_offsets = f["entities/offsets"][()]
            out.entity_vectors = f["entities/vectors"][()]
            out.entity_osm_type = f["entities/osm_type"][()]
            out.entity_osm_id = f["entities/osm_id"][()]
    return out

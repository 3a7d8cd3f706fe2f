"""GeoJEPA's geometry tokens, computed once per dataset and geometry encoder and cached
beside the dataset, like the image tokens (:mod:`gjp.dataset.image_tokens`).

The geometry encoder (a ``gjp pretrain --model polygnn`` run) is frozen during GeoJEPA
pretraining and sees each entity's whole graph (no augmentation), so an entity's
encoder output never changes: running the GNN at every step is wasted work (about half
of a ``tiny`` T,G step on 2 CPU cores, a tenth of a ``base`` one; docs/PERFORMANCE.md).
``dataset.geometry-tokens.<sha12>.h5`` holds one float32 vector per entity, where
``<sha12>`` starts the sha256 of the encoder's ``model.pt``: another encoder, another
file. It is tied to its dataset by the dataset's fingerprint (tile names, size, mtime),
and recomputed when either changes. Imports numpy and gjp's file helpers at module
level only (the loader imports it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.dataset.format import companion_path, decode, open_dataset
from gjp.dataset.image_tokens import dataset_fingerprint
from gjp.errors import GjpError
from gjp.io import check_pending, hdf5_attr, hdf5_output, open_h5
from gjp.ui import QUIET, Reporter

FORMAT = "gjp-geometry-tokens"
FORMAT_VERSION = 1


def encoder_sha256(run_dir: str | Path) -> str:
    path = Path(run_dir) / "model.pt"
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise GjpError(f"{path}: cannot read ({err.strerror or err})") from None
    return digest.hexdigest()


def geometry_tokens_path(dataset: str | Path, sha256: str) -> Path:
    """``dir/dataset.h5`` → ``dir/dataset.geometry-tokens.<sha12>.h5``."""
    return companion_path(dataset, f"geometry-tokens.{sha256[:12]}")


def ensure_geometry_tokens(dataset: str | Path, encoder_run: str | Path, device="cpu", batch_size: int = 64,
                           reporter: Reporter = QUIET) -> Path:
    """The path of ``dataset``'s geometry-token cache for the encoder of ``encoder_run``,
    computed (``batch_size`` tiles at a time) when missing or stale; a damaged one is an
    error naming it."""
    from gjp.embedders.geometry import load_polygnn

    dataset = Path(dataset)
    sha = encoder_sha256(encoder_run)
    with open_dataset(dataset) as f:
        names = decode(f["tiles/name"][()])
        entities = int(f["tiles/entity_offsets"][-1])
    path = geometry_tokens_path(dataset, sha)
    want = {"encoder_sha256": sha, **dataset_fingerprint(dataset, names)}
    if path.exists():
        header = GeometryTokenFile(path)
        if header.attrs_match(want) and header.entities == entities:
            return path
    encoder, _ = load_polygnn(encoder_run, device)
    _compute(dataset, path, {**want, "dim": int(encoder.dim), "encoder": str(encoder_run)}, encoder, device,
             batch_size, reporter)
    return path


def _compute(dataset: Path, path: Path, attrs: dict, encoder, device, batch_size: int, reporter: Reporter) -> None:
    from gjp.embedders.geometry import entity_vectors

    with open_dataset(dataset) as f:
        offsets = f["tiles/entity_offsets"][()]
    with hdf5_output(path, overwrite=True) as out:
        for key, value in {"format": FORMAT, "format_version": FORMAT_VERSION, **attrs, "dataset": dataset.name,
                           "gjp_version": __version__}.items():
            out.attrs[key] = value
        n = int(offsets[-1])
        chunks = {"chunks": (min(n, 4096), attrs["dim"])} if n else {}
        vectors = out.create_dataset("vectors", shape=(n, attrs["dim"]), dtype=np.float32, **chunks)
        for rows, values in entity_vectors(encoder, dataset, batch_size, device, reporter):
            check_pending(out)
            vectors[rows[0]:rows[-1] + 1] = values


class GeometryTokenFile:
    """A cache file, opened lazily (one handle per process; picklable for DataLoader
    workers): ``rows(e0, e1)`` is entities e0..e1−1's vectors, float32 ``[n, dim]``."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = str(path)
        try:
            with open_h5(path, "r") as f:
                fmt = hdf5_attr(f, "format")
                if fmt != FORMAT:
                    raise GjpError(f"{path}: not a gjp geometry-token cache (format {fmt!r}); move it away, it is "
                                   "where the dataset's geometry tokens go")
                self.attrs = {k: hdf5_attr(f, k) for k in f.attrs}
                vectors = f.get("vectors")
                if not isinstance(vectors, h5py.Dataset) or vectors.ndim != 2 \
                        or vectors.shape[1] != self.attrs.get("dim"):
                    raise GjpError(f"{path}: damaged geometry-token cache (no vectors of width "
                                   f"{self.attrs.get('dim')}); delete it and run again to recompute it")
                self.entities, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        except OSError as err:
            raise GjpError(f"{path}: damaged geometry-token cache ({str(err).splitlines()[0]}); delete it and run "
                           "again to recompute it") from None
        self._file = self._pid = None

    def attrs_match(self, want: dict) -> bool:
        return self.attrs.get("format_version") == FORMAT_VERSION and all(
            self.attrs.get(k) == v for k, v in want.items())

    def describe(self) -> dict:
        return {"encoder_sha256": self.attrs.get("encoder_sha256"), "dim": self.dim}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None)
        return state

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path, "r")
            self._pid = os.getpid()
        return self._file["vectors"][start:stop]

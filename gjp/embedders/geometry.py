"""``gjp embed --model polygnn --checkpoint runs/NAME/``: geometry embeddings.

Every entity's graph through a pretrained, frozen :class:`gjp.models.polygnn.PolygonEncoder`
(its weights from a ``gjp pretrain --model polygnn`` run), and tile vectors
``[mean ‖ max]`` over each tile's entities. Entity embeddings are written too, so
``gjp knn --entity`` finds entities of a similar shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gjp.dataset.format import open_dataset
from gjp.dataset.graphs import EntityGraphs
from gjp.ui import QUIET, Reporter


def load_polygnn(run_dir: str | Path, device="cpu"):
    """The frozen encoder of a run (config and weights checked)."""
    from gjp.models.polygnn import PolygonEncoder, PolygonEncoderConfig
    from gjp.pretrain.runs import load_state_dict, read_run_config

    config = read_run_config(run_dir, model="polygnn")
    try:
        model_config = PolygonEncoderConfig(**config["model_config"])
    except (KeyError, TypeError) as err:
        from gjp.errors import GjpError

        raise GjpError(f"{Path(run_dir) / 'config.json'}: damaged run configuration ({err})") from None
    encoder = PolygonEncoder(model_config)
    load_state_dict(run_dir, encoder)
    return encoder.freeze().to(device), config


def entity_vectors(encoder, dataset: Path, batch_size: int = 16, device="cpu", reporter: Reporter = QUIET):
    """Every entity of ``dataset`` through ``encoder`` (frozen, whole graphs), in entity
    order: yields ``(rows, vectors)``, the entities of ``batch_size`` consecutive tiles at
    a time (float32 ``[len(rows), dim]``). Graphs are read block by block."""
    for _, _, first, vectors in _tile_batches(encoder, dataset, batch_size, device, reporter):
        if len(vectors):
            yield np.arange(first, first + len(vectors)), vectors


def _tile_batches(encoder, dataset: Path, batch_size: int, device, reporter: Reporter,
                  block_tiles: int | None = None):
    """``(t0, t1, first entity, entity vectors)`` for every batch of ``batch_size``
    consecutive tiles (empty ones too), each block of graphs read from the file and
    checked as in :meth:`EntityGraphs.checked` before its batches run."""
    import torch

    from gjp.device import autocast
    from gjp.embedders.baselines import BLOCK_TILES, tile_blocks
    from gjp.errors import GjpError

    with open_dataset(dataset) as f:
        tile_offsets = f["tiles/entity_offsets"][()]
        if len(f["entities/kind"]) == 0:
            raise GjpError(f"{dataset}: has no entity graphs (an images-only dataset?); pack it from graphs/")
        tiles = len(tile_offsets) - 1
        bar = reporter.progress(total=tiles, desc="geometry embeddings", unit=" tile")
        with torch.no_grad(), autocast(device):
            # blocks hold whole batches: the encoder sees the same batches as without blocks
            for b0, b1 in tile_blocks(tile_offsets, block_tiles or BLOCK_TILES, multiple=batch_size):
                first = int(tile_offsets[b0])
                graphs = EntityGraphs.from_dataset_range(f, first, int(tile_offsets[b1]))
                graphs.check(str(dataset), first_entity=first)
                for start in range(b0, b1, batch_size):
                    end = min(start + batch_size, b1)
                    rows = np.arange(tile_offsets[start], tile_offsets[end]) - first
                    vectors = (encoder(graphs.batch(rows).to(device)).float().cpu().numpy() if len(rows)
                               else np.zeros((0, encoder.dim), np.float32))
                    yield start, end, int(tile_offsets[start]), vectors
                    bar.update(end - start)
        bar.close()


def polygnn_embeddings(dataset: Path, checkpoint: str | Path, batch_size: int = 16, device: str = "cpu",
                       reporter: Reporter = QUIET, block_tiles: int | None = None, **_):
    """Batches hold the entities of ``batch_size`` consecutive tiles."""
    from gjp.embedders.baselines import EmbedBlock, EmbedResult, pool_tiles

    encoder, config = load_polygnn(checkpoint, device)
    with open_dataset(dataset) as f:
        names = np.asarray(f["tiles/name"][()], dtype=bytes)
        tile_offsets = f["tiles/entity_offsets"][()]

    def blocks():
        with open_dataset(dataset) as f:
            osm_type, osm_id = f["entities/osm_type"], f["entities/osm_id"]
            for t0, t1, first, vectors in _tile_batches(encoder, dataset, batch_size, device, reporter, block_tiles):
                local = tile_offsets[t0:t1 + 1] - first
                yield EmbedBlock(pool_tiles(vectors, local), np.diff(local), vectors,
                                 osm_type[first:first + len(vectors)], osm_id[first:first + len(vectors)])

    params = {"checkpoint": str(checkpoint), "pretext": config.get("pretext"), "preset": config.get("preset"),
              "model_config": config.get("model_config"),
              "pooling": "entity = PolygonEncoder(graph); tile = [mean, max] over entities"}
    return EmbedResult(names, blocks, params, entities=int(tile_offsets[-1]))

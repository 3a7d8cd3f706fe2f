"""``gjp embed --model polygnn --checkpoint runs/NAME/``: geometry embeddings.

Every entity's graph through a pretrained, frozen :class:`gjp.models.polygnn.PolygonEncoder`
(its weights from a ``gjp pretrain --model polygnn`` run), and tile vectors
``[mean ‖ max]`` over each tile's entities. Entity embeddings are written too, so
``gjp knn --entity`` finds entities of a similar shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gjp.dataset.format import decode, open_dataset
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
    a time (float32 ``[len(rows), dim]``)."""
    import torch

    from gjp.device import autocast

    with open_dataset(dataset) as f:
        tile_offsets = f["tiles/entity_offsets"][()]
        graphs = EntityGraphs.checked(f, str(dataset))
    tiles = len(tile_offsets) - 1
    bar = reporter.progress(total=tiles, desc="geometry embeddings", unit=" tile")
    with torch.no_grad(), autocast(device):
        for start in range(0, tiles, batch_size):
            end = min(start + batch_size, tiles)
            rows = np.arange(tile_offsets[start], tile_offsets[end])
            if len(rows):
                yield rows, encoder(graphs.batch(rows).to(device)).float().cpu().numpy()
            bar.update(end - start)
    bar.close()


def polygnn_embeddings(dataset: Path, checkpoint: str | Path, batch_size: int = 16, device: str = "cpu",
                       reporter: Reporter = QUIET, **_):
    """Batches hold the entities of ``batch_size`` consecutive tiles."""
    from gjp.embedders.baselines import EmbedResult, pool_tiles

    encoder, config = load_polygnn(checkpoint, device)
    with open_dataset(dataset) as f:
        names = decode(f["tiles/name"][()])
        tile_offsets = f["tiles/entity_offsets"][()]
        osm_type, osm_id = f["entities/osm_type"][()], f["entities/osm_id"][()]
    out = np.zeros((int(tile_offsets[-1]), encoder.dim), dtype=np.float32)
    for rows, vectors in entity_vectors(encoder, dataset, batch_size, device, reporter):
        out[rows] = vectors
    params = {"checkpoint": str(checkpoint), "pretext": config.get("pretext"), "preset": config.get("preset"),
              "model_config": config.get("model_config"),
              "pooling": "entity = PolygonEncoder(graph); tile = [mean, max] over entities"}
    return EmbedResult(names, pool_tiles(out, tile_offsets), params, entity_offsets=tile_offsets,
                       entity_vectors=out, entity_osm_type=osm_type, entity_osm_id=osm_id)

"""``gjp embed --model runs/NAME/``: tile and entity vectors from a pretrained GeoJEPA.

The run's tokenizer (with its frozen tag table and geometry encoder, both saved in the
checkpoint) makes every tile's tokens, unmasked and without noise or dropout; the target
encoder reads them; a tile's vector is [mean ‖ max] over its real tokens (never padding:
it does not depend on the batch) of the outputs less the run's token centre (the mean
output token over its pretraining tiles), and each entity's token output is its entity
vector (not centred).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gjp.dataset.format import open_dataset
from gjp.dataset.graphs import check_dataset_graphs
from gjp.errors import GjpError
from gjp.ui import QUIET, Reporter


def load_geojepa(run_dir: str | Path, device="cpu"):
    """``(tokenizer, model, config)`` of a run, weights loaded and checked, in eval mode;
    the tokenizer is the one whose tokens the target encoder read in training (the
    moving-average one with ``target_tokenizer=ema``, else the only one)."""

    from gjp.models.geojepa import GeoJepaConfig
    from gjp.models.polygnn import PolygonEncoder, PolygonEncoderConfig
    from gjp.pretrain.geojepa import GeoJepaTrainConfig, build_model
    from gjp.pretrain.runs import load_checkpoint, load_weights, read_run_config

    run_dir = Path(run_dir)
    config = read_run_config(run_dir, model="geojepa")
    path = run_dir / "checkpoint.pt"
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or not {"tokenizer", "model"} <= set(checkpoint):
        raise GjpError(f"{path}: not a GeoJEPA checkpoint (no tokenizer and model weights)")
    try:
        # runs from before these settings: targets through the online tokenizer, tokens unbalanced, fused
        train = GeoJepaTrainConfig(**{"target_tokenizer": "shared", "balanced_tokens": False,
                                      "entity_tokens": "fused", **config["train"]})
        model_config = GeoJepaConfig(**config["model_config"])
        table = np.zeros((config["vocabulary"], config["tag_dim"]), np.float32) if config.get("vocabulary") else None
        encoder = PolygonEncoder(PolygonEncoderConfig(**config["geometry_config"])) \
            if config.get("geometry_config") else None
        image_dim = int(config["image"]["dim"]) if config.get("image") else None
    except (KeyError, TypeError, ValueError) as err:
        raise GjpError(f"{run_dir / 'config.json'}: damaged run configuration ({err})") from None
    tokenizer, model, _ = build_model(train, table, encoder, image_dim, model_config)
    # the tile vectors come from the target encoder, so through the tokenizer that fed it
    weights = checkpoint.get("target_tokenizer") if train.target_tokenizer == "ema" else checkpoint["tokenizer"]
    if weights is None:
        raise GjpError(f"{path}: damaged checkpoint (no target tokenizer weights, but the run used one)")
    load_weights(tokenizer, weights, path)
    load_weights(model, checkpoint["model"], path)
    return tokenizer.to(device).eval(), model.to(device).eval(), config


def geojepa_embeddings(dataset: Path, checkpoint: str | Path, batch_size: int = 16, device: str = "cpu",
                       reporter: Reporter = QUIET, **_):
    """Batches of ``batch_size`` tiles, as they come: memory depends on the batch, not on
    the dataset (tiles are read one by one through the loader)."""
    import torch

    from gjp.dataset.loader import TileDataset, collate_tiles
    from gjp.device import autocast, to_device
    from gjp.embedders.baselines import EmbedBlock, EmbedResult
    from gjp.pretrain.geojepa import GeoJepaTrainConfig

    tokenizer, model, config = load_geojepa(checkpoint, device)
    with open_dataset(dataset) as f:
        names = np.asarray(f["tiles/name"][()], dtype=bytes)
        tile_offsets = f["tiles/entity_offsets"][()]
        vocabulary = len(f["vocab/tags"])
        if config.get("geometry_config"):
            check_dataset_graphs(f, str(dataset))
    if config.get("vocabulary") and vocabulary != config["vocabulary"]:
        raise GjpError(f"{dataset}: a vocabulary of {vocabulary} tags, but {checkpoint} was trained on one of "
                       f"{config['vocabulary']} (embed a dataset packed with --vocab from the same source)")
    image_tokens, rows_with_tokens = None, np.arange(len(names))
    if config.get("image"):
        from gjp.dataset.image_tokens import ImageTokenFile, ensure_image_tokens

        image = config["image"]
        image_tokens = ensure_image_tokens(dataset, image["backbone"], image["weights"], device=device,
                                           reporter=reporter)
        if not GeoJepaTrainConfig(**config["train"]).modality_set() & {"T", "G"}:
            # images alone: a tile without an image has no token, and no vector
            rows_with_tokens = np.flatnonzero(ImageTokenFile(image_tokens).rows >= 0)
    skipped = len(names) - len(rows_with_tokens)
    # only the tiles with a vector, and no entity vectors when some are skipped (images alone)
    with_entities = not skipped and tile_offsets[-1] > 0

    def blocks():
        ds = TileDataset(dataset, image_tokens=image_tokens)
        with open_dataset(dataset) as f:
            osm_type, osm_id = f["entities/osm_type"], f["entities/osm_id"]
            bar = reporter.progress(total=len(rows_with_tokens), desc="geojepa embeddings", unit=" tile")
            with torch.no_grad(), autocast(device):
                for start in range(0, len(rows_with_tokens), batch_size):
                    rows = rows_with_tokens[start:start + batch_size]
                    batch = to_device(collate_tiles([ds[int(i)] for i in rows]), device)
                    tokens, _, padding = tokenizer(batch)
                    vectors, outputs = model.embed(tokens, padding)
                    tiles = vectors.float().cpu().numpy()
                    if with_entities:  # consecutive tiles: their entities are consecutive too
                        e0, e1 = int(tile_offsets[rows[0]]), int(tile_offsets[rows[-1] + 1])
                        real = tokenizer.entity_outputs(outputs, batch).float().cpu().numpy()
                        yield EmbedBlock(tiles, np.diff(tile_offsets[rows[0]:rows[-1] + 2]), real,
                                         osm_type[e0:e1], osm_id[e0:e1])
                    else:
                        yield EmbedBlock(tiles)
                    bar.update(len(rows))
            bar.close()

    params = {"checkpoint": str(checkpoint), "modalities": config["train"].get("modalities"),
              "preset": config.get("preset"), "image": config.get("image"),
              "pooling": "tile = [mean, max] over real tokens of the target encoder's outputs less the "
                         "run's token centre"}
    return EmbedResult(names[rows_with_tokens], blocks, params, skipped=skipped,
                       entities=int(tile_offsets[-1]) if with_entities else None)

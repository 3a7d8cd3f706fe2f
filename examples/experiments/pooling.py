"""How a GeoJEPA run's tile vectors should be pooled: retrieval precision@k (`gjp knn
--eval`'s categories, queries from the validation half, the test half and every tile) of
variants of one pooling of the run's pooled tokens over a tile's entities (the target
encoder's outputs, or with the model's ``pool_layer`` its residual stream there):

- ``raw``: [mean ‖ max] of the pooled tokens, as runs before the token centre pooled them;
- ``mean``, ``max``: one half alone (raw);
- ``tile-centred``: raw less the mean raw tile vector of the pretraining tiles;
- ``tile-standardised``: the same, also divided by the pretraining tiles' sd;
- ``token-centred``: [mean ‖ max] of the pooled tokens less the run's ``token_center``, its
  mean pooled token over the pretraining tiles (what `gjp embed` computes);
- ``token-standardised``: the same, also divided by the pretraining tokens' sd;
- ``max token-centred``: the centred max alone.

Every variant is an affine map of the raw mean and max (a shift and a scale per dimension
commute with both), so one pass over each dataset gives them all. Choose on ``val``.
``--pool-layer`` pools another layer's tokens than the run's (a block count, 0 for the
encoder's input tokens, or ``output``); the token centre is then that layer's mean token over
the pretraining tiles, measured in this pass, since the run saved its own layer's only.

    python examples/experiments/pooling.py RUN_DIR EVAL_DIR [--train-dataset H5] [-k 8] [--pool-layer K]

EVAL_DIR holds ``dataset.h5`` and ``tasks/splits.csv``; the pretraining dataset is the
run's own unless given. A diagnostic for experiments: it holds every tile's pooled vector
in memory (tiles × 2d floats per variant), meant for regions of thousands of tiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from gjp.dataset.loader import TileDataset, collate_tiles
from gjp.embedders.geojepa import load_geojepa
from gjp.embeddings import write_embeddings
from gjp.errors import GjpError
from gjp.evaluate.knn import evaluate_retrieval
from gjp.models.geojepa import pool_tiles

QUERY_SETS = ("val", "test", None)   # None: every tile asks


RUN_LAYER = "run"   # pool the layer the run was trained to pool


def pool_layer_argument(text: str) -> int | None | str:
    """``--pool-layer``: a block count, ``output`` (None: the encoder's output), or the run's own."""
    if text == "output":
        return None
    if text == RUN_LAYER or text.isdigit():
        return text if text == RUN_LAYER else int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: give a block count or 'output'")


def raw_pooling(run: Path, dataset: Path, batch_size: int = 128, pool_layer: int | None | str = RUN_LAYER) -> dict:
    """One pass of a run's target encoder over a dataset: every tile's raw mean and max of
    its pooled tokens ``[N, d]`` each, the tile names, the sd of its real pooled tokens, and
    the token centre: the run's own, or with another ``pool_layer`` the mean measured here."""
    tokenizer, model, _ = load_geojepa(run)
    if pool_layer != RUN_LAYER:
        model.config = dataclasses.replace(model.config, pool_layer=pool_layer)
    data = TileDataset(dataset)
    means, maxes, total, squares, count = [], [], 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collate_tiles([data[i] for i in range(start, min(len(data), start + batch_size))])
            tokens, _, padding = tokenizer(batch)
            tokens, _ = model.pooled_tokens(tokens, padding)   # uncentred: what the run's tile vectors pool
            pooled = pool_tiles(tokens, padding).double()
            half = pooled.shape[1] // 2
            means.append(pooled[:, :half])
            maxes.append(pooled[:, half:])
            real = tokens[~padding].double()
            total, squares, count = total + real.sum(0), squares + (real ** 2).sum(0), count + len(real)
    centre = model.token_center.double() if pool_layer == RUN_LAYER else total / count
    return {"mean": torch.cat(means).numpy(), "max": torch.cat(maxes).numpy(), "names": list(data.names),
            "centre": centre.numpy(), "token_sd": (squares / count - (total / count) ** 2).clamp(min=0).sqrt().numpy()}


def variants(train: dict, evaluation: dict) -> dict[str, np.ndarray]:
    """Name → the evaluation tiles' vectors of each pooling variant."""
    def both(part):
        return np.concatenate([part["mean"], part["max"]], axis=1)

    raw, train_raw = both(evaluation), both(train)
    centre, sd = train["centre"], train["token_sd"] + 1e-6
    tile_centre, tile_sd = train_raw.mean(0), train_raw.std(0) + 1e-6
    return {"raw": raw, "mean": evaluation["mean"], "max": evaluation["max"],
            "tile-centred": raw - tile_centre, "tile-standardised": (raw - tile_centre) / tile_sd,
            "token-centred": raw - np.tile(centre, 2), "token-standardised": (raw - np.tile(centre, 2)) / np.tile(sd, 2),
            "max token-centred": evaluation["max"] - centre}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("evaluation", type=Path, help="the evaluation workspace: dataset.h5, tasks/splits.csv")
    parser.add_argument("--train-dataset", type=Path, default=None, help="[default: the run's pretraining dataset]")
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--pool-layer", type=pool_layer_argument, default=RUN_LAYER, metavar="K",
                        help="pool this many blocks' residual stream, or 'output' [default: the run's pool_layer]")
    args = parser.parse_args()
    layer = args.pool_layer
    train_dataset = args.train_dataset or Path(json.loads((args.run / "config.json").read_text())["train"]["dataset"])
    if not train_dataset.exists():  # a run keeps its dataset as named where it ran
        parser.error(f"{train_dataset}: the run's pretraining dataset is not here; give --train-dataset")
    dataset, splits = args.evaluation / "dataset.h5", args.evaluation / "tasks" / "splits.csv"
    try:
        train = raw_pooling(args.run, train_dataset, pool_layer=layer)
    except ValueError as err:   # a block count beyond the model's depth
        parser.error(f"--pool-layer: {err}")
    evaluation = raw_pooling(args.run, dataset, pool_layer=layer)
    print(f"| {args.run.name}: pooling | p@{args.k} val queries | test queries | every query |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for name, vectors in variants(train, evaluation).items():
            path = Path(scratch) / "pooled.h5"
            write_embeddings(path, evaluation["names"], vectors, model="pooled", dataset=str(dataset), overwrite=True)
            cells = [precision(path, dataset, args.k, scratch, split, splits) for split in QUERY_SETS]
            print(f"| {name} | " + " | ".join("–" if p is None else f"{p:.3f}" for p in cells) + " |", flush=True)


def precision(embeddings: Path, dataset: Path, k: int, scratch: str, split: str | None, splits: Path):
    """`knn --eval`'s precision@k, or None when the split has no tile of a category to ask from."""
    try:
        return evaluate_retrieval(embeddings, dataset, k=k, output_dir=scratch, overwrite=True,
                                  query_split=split, splits=splits).result["precision_mean"]
    except GjpError:
        if split is None:
            raise
        return None


if __name__ == "__main__":
    main()

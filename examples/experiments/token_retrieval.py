"""Where a GeoJEPA run loses what retrieval needs: precision@k (`gjp knn --eval`'s
categories) of a tile vector pooled, [mean ‖ max] over a tile's entities, at each stage
of the run's tokenizer and encoder:

- ``tag``: the projected tag tokens alone (``TagTokens``; T runs);
- ``fused``: the entity tokens after fusing tags and geometry (``EntityFusion``);
- ``conditioning``: the min-box and modality encoding added to every token, alone;
- ``tokens``: what the encoder reads (fused + conditioning);
- ``output``: the run's tile vectors, as `gjp embed` makes them: the target encoder's
  outputs (or with the model's ``pool_layer`` its residual stream there), centred on the
  run's token centre before pooling; its norm is the outputs'.

Also each stage's mean token norm, since a large addend drowns the others.

    python examples/experiments/token_retrieval.py RUN_DIR [DATASET] [-k 8]

A diagnostic for experiments: it holds every tile's pooled vectors in memory (tiles × 2d
floats per stage), so it is meant for evaluation regions of thousands of tiles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gjp.dataset.loader import TileDataset, collate_tiles
from gjp.embedders.geojepa import load_geojepa
from gjp.evaluate.knn import CATEGORIES, category_precision, tile_categories
from gjp.models.geojepa import pool_tiles
from gjp.models.tokenizers import in_entity_slots

STAGES = ("tag", "fused", "conditioning", "tokens", "output")


def stage_vectors(run: Path, dataset: Path, batch_size: int = 256) -> tuple[dict, dict, list[str]]:
    """Per stage, the pooled vectors of every tile ``[N, 2d]`` and its mean token norm;
    and the tile names."""
    tokenizer, model, _ = load_geojepa(run)
    seen: dict[str, torch.Tensor] = {}
    if tokenizer.tags is not None:
        tokenizer.tags.register_forward_hook(lambda m, i, o: seen.__setitem__("tag", o))
    if tokenizer.fusion is not None:  # split entity tokens have no fusion
        tokenizer.fusion.register_forward_hook(lambda m, i, o: seen.__setitem__("fused", o))
    tokenizer.conditioning.register_forward_hook(lambda m, i, o: seen.__setitem__("conditioning", o))
    data = TileDataset(dataset)
    vectors = {s: [] for s in STAGES}
    norms = {s: [] for s in STAGES}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collate_tiles([data[i] for i in range(start, min(len(data), start + batch_size))])
            tokens, _, padding = tokenizer(batch)
            tiles, output = model.embed(tokens, padding)
            per_slot = {"tokens": (tokens, padding), "output": (output, padding),
                        "conditioning": (seen["conditioning"], padding)}
            entities = batch["padding_mask"]  # the entity slots (split tokens have each twice)
            for stage in ("tag", "fused"):
                if stage in seen:   # per entity: placed in the entity's slot
                    per_slot[stage] = (in_entity_slots(seen[stage], batch), entities)
            for stage, (values, pad) in per_slot.items():
                # the output stage is the run's own tile vectors (pooled around its token centre)
                vectors[stage].append(tiles if stage == "output" else pool_tiles(values, pad))
                norms[stage].append(float(values[~pad].norm(dim=-1).mean()))
    return ({s: torch.cat(v).numpy() for s, v in vectors.items() if v},
            {s: float(np.mean(n)) for s, n in norms.items() if n}, data.names)


def precision(vectors: np.ndarray, members: dict[str, np.ndarray], k: int) -> float:
    """Mean over categories of k+1 tiles or more of the share of neighbours in the category."""
    return float(np.mean([category_precision(vectors, rows, rows, k) for rows in members.values()
                          if len(rows) >= k + 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path, nargs="?", default=Path("dataset.h5"))
    parser.add_argument("-k", type=int, default=8)
    args = parser.parse_args()
    vectors, norms, names = stage_vectors(args.run, args.dataset)
    members = tile_categories(args.dataset, names, CATEGORIES)
    print(f"| {args.run.name}: stage | precision@{args.k} | mean token norm |\n|---|---:|---:|")
    for stage in STAGES:
        if stage in vectors:
            print(f"| {stage} | {precision(vectors[stage], members, args.k):.3f} | {norms[stage]:.2f} |")


if __name__ == "__main__":
    main()

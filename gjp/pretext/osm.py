"""The OSM pretext: predict what an entity's shape is from its graph alone.

Self-supervised on a ``dataset.h5``'s own entity graphs; no task label and no tag is
used. The targets, per entity, are descriptors of its geometry that the encoder has to
read off the vertices and edges (they are computed here from the same graph and the min
box ``gjp bbox`` stored):

- ``kind`` (5 classes): point, line, polygon, multipolygon, relation;
- ``log_area``: log of the min box's area (tile units²);
- ``aspect``: the min box's short side over its long side, in (0, 1];
- ``log_length``: log of the total length of the geometry edges (perimeter, line length);
- ``elongation``: log of that length over the min box's perimeter, scale-free (≈ 0 for
  a box, < 0 for a sparse line, > 0 for a wiggly or many-part shape);
- ``log_parts``: log(1 + the number of parts: polygons, holes, line pieces, members).

Entities are split by tile group (the unit of every gjp split), seeded, 80/10/10.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gjp.dataset.graphs import EntityGraphs
from gjp.kinds import KINDS

REGRESSION_TARGETS = ("log_area", "aspect", "log_length", "elongation", "log_parts")


@dataclass
class OsmShapes:
    graphs: EntityGraphs
    kind: np.ndarray          # [E] int64, index into KINDS
    targets: np.ndarray       # [E, len(REGRESSION_TARGETS)] float32
    split: np.ndarray         # [E] "train" / "val" / "test"
    params: dict = field(default_factory=dict)


def shape_targets(graphs: EntityGraphs, node_part: np.ndarray, min_box_shape: np.ndarray) -> np.ndarray:
    """The regression targets of the module doc, ``[E, 5]`` float32."""
    n = len(graphs)
    width, height = min_box_shape[:, 0].astype(np.float64), min_box_shape[:, 1].astype(np.float64)
    long_side, short_side = np.maximum(width, height), np.minimum(width, height)
    area = np.maximum(width * height, 1e-12)
    owner = np.repeat(np.arange(n), np.diff(graphs.geometry_offsets))
    node_start = graphs.node_offsets[:-1]
    ends = graphs.geometry_edges.astype(np.int64) + node_start[owner][:, None]
    lengths = np.linalg.norm(graphs.nodes[ends[:, 1]].astype(np.float64) - graphs.nodes[ends[:, 0]], axis=1)
    length = np.bincount(owner, weights=lengths, minlength=n)
    vertex_owner = np.repeat(np.arange(n), np.diff(graphs.node_offsets))
    # parts: distinct (entity, part id) pairs
    parts = np.bincount(np.unique(np.c_[vertex_owner, node_part], axis=0)[:, 0], minlength=n)
    return np.stack([np.log(area), short_side / np.maximum(long_side, 1e-12), np.log(length + 1e-6),
                     np.log((length + 1e-6) / (2 * (width + height) + 1e-6)), np.log1p(parts)],
                    axis=1).astype(np.float32)


def build_osm_shapes(dataset, seed: int = 0, max_entities: int | None = None) -> OsmShapes:
    """The pretext data of ``dataset`` (a dataset.h5 path), at most ``max_entities``
    entities (a seeded sample, for CPU budgets)."""
    from gjp.dataset.format import open_dataset

    with open_dataset(dataset) as f:
        graphs = EntityGraphs.checked(f, str(dataset))
        kind = f["entities/kind"][()].astype(np.int64)
        node_part = f["graph/node_part"][()]
        shape = f["entities/min_box_shape"][()]
        groups = f["tiles/group"][()]
        tile_offsets = f["tiles/entity_offsets"][()]
    targets = shape_targets(graphs, node_part, shape)
    unique = np.unique(groups)
    order = np.random.default_rng([seed, 1]).permutation(len(unique))
    rank = np.empty(len(unique), dtype=np.int64)
    rank[order] = np.arange(len(unique))
    cut_train, cut_val = round(0.8 * len(unique)), round(0.9 * len(unique))
    group_split = np.where(rank < cut_train, "train", np.where(rank < cut_val, "val", "test"))
    tile_split = group_split[np.searchsorted(unique, groups)]
    split = np.repeat(tile_split, np.diff(tile_offsets)).astype(object)
    keep = np.arange(len(graphs))
    if max_entities is not None and len(keep) > max_entities:
        keep = np.sort(np.random.default_rng([seed, 2]).choice(len(keep), max_entities, replace=False))
        graphs = graphs.take(keep)
    return OsmShapes(graphs, kind[keep], targets[keep], split[keep],
                     {"dataset": str(dataset), "max_entities": max_entities, "kinds": list(KINDS),
                      "targets": list(REGRESSION_TARGETS)})

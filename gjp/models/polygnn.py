"""The geometry encoder: a PolygonGNN-style graph network over each entity's graph.

Written from the description of PolygonGNN (Yu et al., KDD 2024). An entity's graph has
its vertices (positions in the tile frame), the edges along its geometry and the
visibility edges between its parts (``gjp visibility``). Messages flow along edges j→i
and along *triplets* k→j→i (two consecutive edges, never straight back: k ≠ i). Their
geometric features are what a shape is made of and nothing else:

- an edge j→i: its length;
- a triplet k→j→i: the two lengths |p_j − p_k|, |p_i − p_j| and the angle between the two
  steps, as (cos, |sin|).

Lengths and angles do not change when an entity is translated, rotated or mirrored, and
message passing followed by a symmetric pooling does not depend on the order of vertices
or parts: the invariances hold by construction (and are tested).

Separate weights per edge type (geometry 0, visibility 1) for edge messages, and per pair
of types (k→j, j→i) for triplet messages. Several interaction blocks, each a residual
update followed by LayerNorm; every block's node states are concatenated and pooled per
entity as [mean ‖ max] over its vertices, so the embedding does not grow with the vertex
count (the original summed) and stays well defined for a point (one vertex, no edge) or
a 2-vertex line (an edge, no triplet). There is no BatchNorm and no dropout: an entity's
embedding does not depend on what else is in the batch, in training or in eval, and
:meth:`PolygonEncoder.freeze` pins a frozen encoder in eval mode for good.

Imports torch and torch-geometric only.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch-geometric's import calls torch.jit.script
    from torch_geometric.utils import scatter

from gjp.models.presets import preset_settings

EDGE_TYPES = 2  # geometry, visibility


@dataclass(frozen=True)
class PolygonEncoderConfig:
    hidden: int = 64          # node state width
    blocks: int = 3           # interaction blocks (their states are concatenated)
    depth: int = 2            # layers per message MLP
    out_dim: int = 256        # embedding width (a linear map of the pooled states)

    @classmethod
    def preset(cls, name: str) -> PolygonEncoderConfig:
        return cls(**preset_settings(PRESETS, name))

    def to_dict(self) -> dict:
        return asdict(self)


#: ``tiny`` for CPU tests and the demo; ``base`` is the size the geometry tokens use.
PRESETS = {
    "tiny": {"hidden": 32, "blocks": 2, "depth": 1, "out_dim": 64},
    "small": {"hidden": 64, "blocks": 3, "depth": 2, "out_dim": 128},
    "base": {"hidden": 128, "blocks": 4, "depth": 2, "out_dim": 256},
}


def triplets(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of edges (k→j, j→i) with k ≠ i, as two index tensors into the edges:
    ``(kj, ji)``. Vectorised: each edge j→i is repeated once per edge into j, and the edges
    into j are found through the edges sorted by target."""
    src, dst = edge_index
    by_target = torch.argsort(dst, stable=True)
    into = torch.bincount(dst, minlength=num_nodes)
    first_into = torch.cumsum(into, 0) - into
    per_edge = into[src]                                    # edges k→j for each j→i
    ji = torch.repeat_interleave(torch.arange(len(src), device=src.device), per_edge)
    rank = torch.arange(len(ji), device=src.device) - torch.repeat_interleave(
        torch.cumsum(per_edge, 0) - per_edge, per_edge)
    kj = by_target[first_into[src[ji]] + rank]
    keep = src[kj] != dst[ji]                               # not straight back
    return kj[keep], ji[keep]


def _mlp(inputs: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(inputs, width), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.SiLU()]
    return nn.Sequential(*layers)


def _length_features(d: torch.Tensor) -> torch.Tensor:
    # the length and its logarithm: shapes span 1e-4 (a building's corner) to 1 tile
    return torch.stack([d, torch.log(d + 1e-5)], dim=-1)


class InteractionBlock(nn.Module):
    """One round of edge and triplet messages, a residual update and a LayerNorm."""

    def __init__(self, hidden: int, depth: int):
        super().__init__()
        self.edge = nn.ModuleList([_mlp(2 * hidden, hidden, depth) for _ in range(EDGE_TYPES)])
        self.triplet = nn.ModuleList([_mlp(3 * hidden, hidden, depth) for _ in range(EDGE_TYPES ** 2)])
        self.update = _mlp(3 * hidden, hidden, 1)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h, edge_index, edge_sizes, edge_geo, kj, ji, triplet_sizes, triplet_geo):
        """Edges come sorted by type and triplets by pair of types (``*_sizes``: how many
        of each), so each type's weights apply to one contiguous slice: no masks."""
        src, dst = edge_index
        n = h.shape[0]
        edge_in = torch.cat([h[src], edge_geo], dim=-1).split(edge_sizes)
        messages = torch.cat([mlp(part) for mlp, part in zip(self.edge, edge_in)])
        from_edges = scatter(messages, dst, dim=0, dim_size=n, reduce="mean")
        triplet_in = torch.cat([h[src[kj]], h[src[ji]], triplet_geo], dim=-1).split(triplet_sizes)
        tri = torch.cat([mlp(part) for mlp, part in zip(self.triplet, triplet_in)])
        from_triplets = scatter(tri, dst[ji], dim=0, dim_size=n, reduce="mean")
        return self.norm(h + self.out(self.update(torch.cat([h, from_edges, from_triplets], dim=-1))))


class PolygonEncoder(nn.Module):
    """Entity graphs → one embedding per entity, ``[num_graphs, config.out_dim]``.

    Takes a torch-geometric batch as :meth:`gjp.dataset.graphs.EntityGraphs.batch` makes
    it: ``x`` [V,2] positions, ``edge_index`` [2,E] (both directions of every edge),
    ``edge_type`` [E], ``batch`` [V] the entity of each vertex, ``num_graphs``.
    """

    def __init__(self, config: PolygonEncoderConfig | None = None):
        super().__init__()
        self.config = config or PolygonEncoderConfig()
        h = self.config.hidden
        self.start = nn.Parameter(torch.zeros(h))  # every vertex starts alike: no absolute position
        self.edge_geo = _mlp(2, h, 1)
        self.triplet_geo = _mlp(4, h, 1)
        self.blocks = nn.ModuleList([InteractionBlock(h, self.config.depth) for _ in range(self.config.blocks)])
        self.head = nn.Sequential(nn.Linear(2 * h * self.config.blocks, self.config.out_dim),
                                  nn.LayerNorm(self.config.out_dim))
        self.frozen = False
        nn.init.normal_(self.start, std=1.0)

    @property
    def dim(self) -> int:
        return self.config.out_dim

    def forward(self, graph) -> torch.Tensor:
        pos, edge_index, edge_type, owner = graph.x, graph.edge_index, graph.edge_type, graph.batch
        n, entities = pos.shape[0], int(graph.num_graphs)
        by_type = torch.argsort(edge_type, stable=True)  # each type's edges contiguous
        edge_index, edge_type = edge_index[:, by_type], edge_type[by_type]
        edge_sizes = torch.bincount(edge_type, minlength=EDGE_TYPES).tolist()
        src, dst = edge_index
        step = pos[dst] - pos[src]                          # j→i
        edge_geo = self.edge_geo(_length_features(step.norm(dim=-1)))
        kj, ji = triplets(edge_index, n)
        pair_type = edge_type[kj] * EDGE_TYPES + edge_type[ji]
        by_pair = torch.argsort(pair_type, stable=True)
        kj, ji = kj[by_pair], ji[by_pair]
        triplet_sizes = torch.bincount(pair_type, minlength=EDGE_TYPES ** 2).tolist()
        a, b = step[kj], step[ji]                           # k→j, then j→i
        la, lb = a.norm(dim=-1), b.norm(dim=-1)
        scale = la * lb + 1e-12
        cos = (a * b).sum(-1) / scale
        sin = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).abs() / scale  # unsigned: mirror-invariant
        triplet_geo = self.triplet_geo(torch.stack([la, lb, cos, sin], dim=-1))
        h = self.start.expand(n, -1)
        states = []
        for block in self.blocks:
            h = block(h, edge_index, edge_sizes, edge_geo, kj, ji, triplet_sizes, triplet_geo)
            states.append(h)
        nodes = torch.cat(states, dim=-1)
        pooled = torch.cat([scatter(nodes, owner, dim=0, dim_size=entities, reduce="mean"),
                            scatter(nodes, owner, dim=0, dim_size=entities, reduce="max")], dim=-1)
        return self.head(pooled)

    def freeze(self) -> PolygonEncoder:
        """No gradients, eval mode, and eval mode kept through any later ``.train()``
        (a parent module switching to training must not switch this one)."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)

"""Entity graphs as flat arrays, and their torch-geometric batches.

An entity's graph (from ``gjp visibility``) is its vertices in the tile frame, the edges
along its geometry, and the visibility edges between its parts. Many entities are kept as
flat arrays with CSR offsets, as in ``dataset.h5``: entity ``e`` owns
``nodes[node_offsets[e]:node_offsets[e+1]]``, and its edges hold *entity-local* vertex
indices. :meth:`EntityGraphs.batch` turns any selection of entities into one
torch-geometric ``Batch``, the input of :class:`gjp.models.polygnn.PolygonEncoder`.

numpy at import; torch and torch-geometric only inside :meth:`EntityGraphs.batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE_GEOMETRY, EDGE_VISIBILITY = 0, 1


def check_dataset_graphs(f, where: str, chunk: int = 1 << 20) -> None:
    """An open ``dataset.h5`` has entity graphs, and every vertex coordinate is finite:
    scanned ``chunk`` vertices at a time, so memory does not grow with the dataset (for
    readers that stream tiles rather than load every graph)."""
    from gjp.errors import GjpError

    if len(f["entities/kind"]) == 0:
        raise GjpError(f"{where}: has no entity graphs (an images-only dataset?); pack it from graphs/")
    nodes = f["graph/nodes"]
    for start in range(0, len(nodes), chunk):
        block = nodes[start:start + chunk]
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            entity = int(np.searchsorted(f["graph/node_offsets"][()], start + bad[0], side="right") - 1)
            raise GjpError(f"{where}: entity {entity} has a vertex with a coordinate that is not finite")


def gather(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows ``rows``: the indices of their items in the flat array, and new offsets."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    index = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return index.astype(np.int64), new_offsets


@dataclass
class EntityGraphs:
    nodes: np.ndarray                # [V, 2] float32, tile units
    node_offsets: np.ndarray         # [E+1] int64
    geometry_edges: np.ndarray       # [G, 2] int32, entity-local vertex indices
    geometry_offsets: np.ndarray     # [E+1] int64
    visibility_edges: np.ndarray     # [P, 2] int32, entity-local
    visibility_offsets: np.ndarray   # [E+1] int64

    def __len__(self) -> int:
        return len(self.node_offsets) - 1

    @classmethod
    def from_geometries(cls, geometries, k: int = 1) -> EntityGraphs:
        """The graphs ``gjp visibility`` builds, for shapely geometries (or a WKB column)
        already in their local frame."""
        from gjp.geometry.visibility import visibility_edges

        vertices, _, voff, edges, eoff, pairs, poff = visibility_edges(geometries, k)
        entity_of_edge = np.repeat(np.arange(len(voff) - 1), np.diff(eoff))
        entity_of_pair = np.repeat(np.arange(len(voff) - 1), np.diff(poff))
        return cls(np.asarray(vertices, np.float32).reshape(-1, 2), np.asarray(voff, np.int64),
                   (edges - voff[entity_of_edge][:, None]).astype(np.int32).reshape(-1, 2), np.asarray(eoff, np.int64),
                   (pairs - voff[entity_of_pair][:, None]).astype(np.int32).reshape(-1, 2), np.asarray(poff, np.int64))

    @classmethod
    def from_dataset(cls, f, entities: np.ndarray | None = None) -> EntityGraphs:
        """Graphs of an open ``dataset.h5`` (all entities, or the sorted ``entities``)."""
        whole = cls(f["graph/nodes"][()], f["graph/node_offsets"][()], f["graph/geometry_edges"][()],
                    f["graph/geometry_edge_offsets"][()], f["graph/visibility_edges"][()],
                    f["graph/visibility_edge_offsets"][()])
        return whole if entities is None else whole.take(entities)

    @classmethod
    def from_dataset_range(cls, f, first: int, stop: int) -> EntityGraphs:
        """Graphs of entities ``first``..``stop``−1 of an open ``dataset.h5``, read by
        slicing: memory grows with the range, not with the dataset."""
        arrays, offsets = [], []
        for items, offsets_name in (("graph/nodes", "graph/node_offsets"),
                                    ("graph/geometry_edges", "graph/geometry_edge_offsets"),
                                    ("graph/visibility_edges", "graph/visibility_edge_offsets")):
            o = f[offsets_name][first:stop + 1]
            arrays.append(f[items][int(o[0]):int(o[-1])] if len(o) else f[items][0:0])
            offsets.append((o - o[0]) if len(o) else np.zeros(1, np.int64))
        return cls(arrays[0], offsets[0], arrays[1], offsets[1], arrays[2], offsets[2])

    @classmethod
    def concat(cls, parts: list[EntityGraphs]) -> EntityGraphs:
        """Several sets of graphs as one, in order."""
        def offsets(name):
            pieces = [np.zeros(1, np.int64)]
            base = 0
            for part in parts:
                o = np.asarray(getattr(part, name), dtype=np.int64)
                pieces.append(o[1:] - o[0] + base)
                base += int(o[-1] - o[0])
            return np.concatenate(pieces)

        return cls(np.concatenate([p.nodes.reshape(-1, 2) for p in parts]).astype(np.float32), offsets("node_offsets"),
                   np.concatenate([p.geometry_edges.reshape(-1, 2) for p in parts]), offsets("geometry_offsets"),
                   np.concatenate([p.visibility_edges.reshape(-1, 2) for p in parts]), offsets("visibility_offsets"))

    @classmethod
    def checked(cls, f, where: str) -> EntityGraphs:
        """Every graph of an open ``dataset.h5`` for a model to read: there are some, and
        they pass :meth:`check`; one-line errors naming ``where`` otherwise."""
        graphs = cls.from_dataset(f)
        if len(graphs) == 0:
            from gjp.errors import GjpError

            raise GjpError(f"{where}: has no entity graphs (an images-only dataset?); pack it from graphs/")
        graphs.check(where)
        return graphs

    def take(self, entities) -> EntityGraphs:
        """The graphs of ``entities`` (indices, in that order)."""
        entities = np.asarray(entities, dtype=np.int64)
        nodes, node_offsets = gather(self.node_offsets, entities)
        geo, geo_offsets = gather(self.geometry_offsets, entities)
        vis, vis_offsets = gather(self.visibility_offsets, entities)
        return EntityGraphs(self.nodes[nodes], node_offsets, self.geometry_edges[geo], geo_offsets,
                            self.visibility_edges[vis], vis_offsets)

    def check(self, where: str, first_entity: int = 0) -> None:
        """Finite coordinates and edges inside their entity, or a one-line error (naming
        the entity as ``first_entity`` + its index here: graphs read from a range)."""
        from gjp.errors import GjpError

        if not np.isfinite(self.nodes).all():
            bad = np.flatnonzero(~np.isfinite(self.nodes).all(axis=1))[0]
            entity = first_entity + int(np.searchsorted(self.node_offsets, bad, side="right") - 1)
            raise GjpError(f"{where}: entity {entity} has a vertex with a coordinate that is not finite")
        counts = np.diff(self.node_offsets)
        for edges, offsets, name in ((self.geometry_edges, self.geometry_offsets, "geometry"),
                                     (self.visibility_edges, self.visibility_offsets, "visibility")):
            owner = np.repeat(np.arange(len(self)), np.diff(offsets))
            if len(edges) and ((edges < 0).any() or (edges >= counts[owner][:, None]).any()):
                raise GjpError(f"{where}: a {name} edge points outside its entity's vertices")

    def batch(self, entities=None, spanning_tree_seed: int | None = None):
        """One torch-geometric ``Batch`` of ``entities`` (default: all): ``x`` [V,2] vertex
        positions, ``edge_index`` [2,2M] every edge in both directions, ``edge_type``
        (0 geometry, 1 visibility), ``batch`` [V] the entity of each vertex (0..len-1),
        ``num_graphs``. With ``spanning_tree_seed``, the PolygonGNN training augmentation:
        each entity keeps only a random spanning tree of its edges (random weights, minimum
        spanning forest), so a visibility edge survives only where it lies on the tree."""
        import torch

        graphs = self if entities is None else self.take(entities)
        n = len(graphs)
        node_counts = np.diff(graphs.node_offsets)
        node_start = graphs.node_offsets[:-1]
        parts, types = [], []
        for edges, offsets, edge_type in ((graphs.geometry_edges, graphs.geometry_offsets, EDGE_GEOMETRY),
                                          (graphs.visibility_edges, graphs.visibility_offsets, EDGE_VISIBILITY)):
            owner = np.repeat(np.arange(n), np.diff(offsets))
            parts.append(edges.reshape(-1, 2).astype(np.int64) + node_start[owner][:, None])  # local → batch
            types.append(np.full(len(owner), edge_type, dtype=np.int64))
        edges, edge_type = np.concatenate(parts), np.concatenate(types)
        if spanning_tree_seed is not None:
            keep = _spanning_forest(edges, int(graphs.node_offsets[-1]), spanning_tree_seed)
            edges, edge_type = edges[keep], edge_type[keep]
        edge_index = np.ascontiguousarray(np.concatenate([edges, edges[:, ::-1]]).T)
        Batch = _batch_class()
        out = Batch(x=torch.from_numpy(np.ascontiguousarray(graphs.nodes, dtype=np.float32).reshape(-1, 2)),
                    edge_index=torch.from_numpy(edge_index),
                    edge_type=torch.from_numpy(np.concatenate([edge_type, edge_type])),
                    batch=torch.from_numpy(np.repeat(np.arange(n), node_counts)))
        out.ptr = torch.from_numpy(graphs.node_offsets.copy())
        out._num_graphs = n
        return out


def _spanning_forest(edges: np.ndarray, n_nodes: int, seed: int) -> np.ndarray:
    """A mask over ``edges`` [M,2]: a minimum spanning forest under random weights in [1, 2)
    (one spanning tree per connected entity). Duplicate edges keep one copy at most."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    if len(edges) == 0:
        return np.zeros(0, dtype=bool)
    weights = np.random.default_rng(seed).uniform(1.0, 2.0, len(edges))
    lo, hi = np.minimum(edges[:, 0], edges[:, 1]), np.maximum(edges[:, 0], edges[:, 1])
    # the lightest copy of each undirected edge stands for it in the graph scipy sees
    order = np.lexsort((weights, hi, lo))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (lo[order][1:] != lo[order][:-1]) | (hi[order][1:] != hi[order][:-1])
    chosen = order[first & (lo[order] != hi[order])]
    tree = minimum_spanning_tree(coo_matrix((weights[chosen], (lo[chosen], hi[chosen])),
                                            shape=(n_nodes, n_nodes))).tocoo()
    on_tree = set(zip(tree.row.tolist(), tree.col.tolist()))
    keep = np.zeros(len(edges), dtype=bool)
    keep[chosen] = [(int(a), int(b)) in on_tree for a, b in zip(lo[chosen], hi[chosen])]
    return keep


def _batch_class():
    import warnings

    with warnings.catch_warnings():
        # torch-geometric's import uses torch.jit.script, which torch now flags as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        from torch_geometric.data import Batch
    return Batch

"""The geometry encoder: triplets against a plain-Python reference, invariances by
construction, well-defined embeddings for points and 2-vertex lines, frozen use."""

import math

import numpy as np
import pytest
import shapely
import torch

from gjp.dataset.graphs import EntityGraphs
from gjp.models.polygnn import PolygonEncoder, PolygonEncoderConfig, triplets

SQUARE_WITH_HOLE = shapely.Polygon([(0.1, 0.1), (0.6, 0.1), (0.6, 0.6), (0.1, 0.6)],
                                   [[(0.25, 0.25), (0.45, 0.25), (0.45, 0.45), (0.25, 0.45)]])
TWO_TOUCHING_SQUARES = shapely.MultiPolygon([shapely.box(0.1, 0.1, 0.3, 0.3), shapely.box(0.3, 0.1, 0.5, 0.3)])
A_LINE = shapely.LineString([(0.1, 0.2), (0.4, 0.25), (0.7, 0.1)])
A_SEGMENT = shapely.LineString([(0.1, 0.2), (0.4, 0.25)])
A_POINT = shapely.Point(0.3, 0.3)
SHAPES = [SQUARE_WITH_HOLE, TWO_TOUCHING_SQUARES, A_LINE, A_SEGMENT, A_POINT,
          shapely.MultiLineString([[(0.1, 0.1), (0.2, 0.3)], [(0.5, 0.5), (0.6, 0.4), (0.8, 0.45)]])]


def reference_triplets(edges):
    """Every (k→j, j→i) with k ≠ i, by brute force over pairs of edges."""
    return {(a, b) for b, (j, i) in enumerate(edges) for a, (k, j2) in enumerate(edges) if j2 == j and k != i}


@pytest.fixture(scope="module")
def graphs():
    return EntityGraphs.from_geometries(SHAPES)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return PolygonEncoder(PolygonEncoderConfig.preset("tiny")).eval()


def test_triplets_match_a_plain_python_reference(graphs):
    for e in range(len(graphs)):
        batch = graphs.batch([e])
        edges = batch.edge_index.T.tolist()
        kj, ji = triplets(batch.edge_index, batch.num_nodes)
        found = set(zip(kj.tolist(), ji.tolist()))
        assert len(found) == len(kj)  # no triplet twice
        assert found == reference_triplets(edges), e
    # a segment has one edge each way and no triplet (it would go straight back); a point none
    assert len(triplets(graphs.batch([3]).edge_index, 2)[0]) == 0
    assert graphs.batch([4]).edge_index.shape[1] == 0


def test_the_hand_made_graphs_have_the_expected_edges(graphs):
    batch = graphs.batch([0])  # square with a hole: 8 ring edges, visibility edges between the rings
    types = batch.edge_type.tolist()
    assert types.count(0) == 2 * 8 and types.count(1) > 0
    assert graphs.batch([2]).edge_type.tolist() == [0, 0, 0, 0]  # a 3-vertex line: 2 edges, both ways


def embed(encoder, graphs, entities=None):
    with torch.no_grad():
        return encoder(graphs.batch(entities)).numpy()


def transformed(graphs, fn):
    return EntityGraphs(fn(graphs.nodes.astype(np.float64)).astype(np.float32), graphs.node_offsets,
                        graphs.geometry_edges, graphs.geometry_offsets, graphs.visibility_edges,
                        graphs.visibility_offsets)


def test_translation_rotation_and_mirroring_leave_embeddings_unchanged(encoder, graphs):
    base = embed(encoder, graphs)
    angle = 0.7
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for fn in (lambda p: p + [0.31, -0.12], lambda p: (p - 0.5) @ rot.T + 0.5, lambda p: p * [-1, 1] + [1, 0]):
        np.testing.assert_allclose(embed(encoder, transformed(graphs, fn)), base, atol=1e-5)


def test_listing_parts_in_another_order_leaves_embeddings_unchanged(encoder):
    parts = [shapely.box(0.1, 0.1, 0.2, 0.2), shapely.box(0.4, 0.1, 0.5, 0.25), shapely.box(0.2, 0.5, 0.35, 0.6)]
    one = EntityGraphs.from_geometries([shapely.MultiPolygon(parts)])
    other = EntityGraphs.from_geometries([shapely.MultiPolygon(parts[::-1])])
    np.testing.assert_allclose(embed(encoder, other), embed(encoder, one), atol=1e-5)
    # and the vertices of one graph renumbered, edges alike
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(one.nodes))
    inverse = np.argsort(perm)
    shuffled = EntityGraphs(one.nodes[perm], one.node_offsets, inverse[one.geometry_edges].astype(np.int32),
                            one.geometry_offsets, inverse[one.visibility_edges].astype(np.int32),
                            one.visibility_offsets)
    np.testing.assert_allclose(embed(encoder, shuffled), embed(encoder, one), atol=1e-5)


def test_points_and_segments_are_well_defined_and_distinct(encoder, graphs):
    out = embed(encoder, graphs)
    assert np.isfinite(out).all()
    assert not np.allclose(out[3], out[4])  # a segment is not a point
    longer = EntityGraphs.from_geometries([shapely.LineString([(0.1, 0.2), (0.7, 0.5)])])
    assert not np.allclose(embed(encoder, longer)[0], out[3])  # and its length matters


def test_the_embedding_does_not_depend_on_the_batch(encoder, graphs):
    alone = np.concatenate([embed(encoder, graphs, [e]) for e in range(len(graphs))])
    np.testing.assert_allclose(embed(encoder, graphs), alone, atol=1e-5)
    np.testing.assert_allclose(embed(encoder, graphs, [5, 0, 2])[1], alone[0], atol=1e-5)


def test_the_embedding_does_not_grow_with_the_vertex_count(encoder):
    """The same square, its sides cut into more and more vertices: pooling averages."""
    def square(n):
        t = np.linspace(0, 1, n, endpoint=False)
        ring = np.concatenate([np.c_[t, 0 * t], np.c_[1 + 0 * t, t], np.c_[1 - t, 1 + 0 * t], np.c_[0 * t, 1 - t]])
        return shapely.Polygon(0.1 + 0.3 * ring)
    pooled = []
    hook = encoder.head.register_forward_hook(lambda module, args, out: pooled.append(args[0]))
    embed(encoder, EntityGraphs.from_geometries([square(n) for n in (2, 8, 32)]))
    hook.remove()
    norms = pooled[0].norm(dim=1).numpy()  # what the head sees; a sum would grow 16×
    assert norms.max() / norms.min() < 1.5


def test_a_frozen_encoder_stays_in_eval_mode_and_has_no_gradients(graphs):
    torch.manual_seed(1)
    encoder = PolygonEncoder(PolygonEncoderConfig.preset("tiny")).freeze()
    parent = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.dim, 1))
    parent.train()
    assert not encoder.training and all(not m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    out = parent(graphs.batch())
    out.sum().backward()
    assert parent[1].weight.grad is not None


def test_spanning_tree_augmentation_keeps_a_tree_per_entity(graphs):
    full = graphs.batch()
    tree = graphs.batch(spanning_tree_seed=3)
    assert tree.edge_index.shape[1] < full.edge_index.shape[1]
    # a forest: vertices − components edges (each kept edge appears in both directions)
    undirected = tree.edge_index.shape[1] // 2
    components = len(graphs)  # every hand-made entity is connected through its visibility edges
    assert undirected == graphs.node_offsets[-1] - components
    again = graphs.batch(spanning_tree_seed=3)
    assert torch.equal(again.edge_index, tree.edge_index)

"""GeoJEPA's entity tokens and conditioning: frozen parts stay frozen, modality dropout is
per entity and never drops both halves, conditioning is added by the caller and noisy in
training only."""

import numpy as np
import pytest
import shapely
import torch

from gjp.dataset.graphs import EntityGraphs
from gjp.models.polygnn import PolygonEncoder, PolygonEncoderConfig
from gjp.models.tokenizers import Conditioning, EntityFusion, GeometryTokens, TagTokens


def test_tag_tokens_average_frozen_vectors():
    torch.manual_seed(0)
    table = torch.randn(10, 6)
    tags = TagTokens(table, dim=16)
    ids, offsets = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 3, 3])  # entities of 3, 0 and 1 tags
    out = tags(ids, offsets)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    assert not tags.bag.weight.requires_grad
    mean = torch.nn.functional.normalize(table[[1, 2, 3]].mean(0), dim=0)
    torch.testing.assert_close(out[0], tags.proj(mean[None])[0])
    torch.testing.assert_close(out[1], tags.proj(torch.zeros(1, 6))[0])  # no tags: zeros in


def test_geometry_tokens_keep_the_encoder_frozen():
    torch.manual_seed(1)
    geometry = GeometryTokens(PolygonEncoder(PolygonEncoderConfig.preset("tiny")), dim=16)
    geometry.train()
    assert not geometry.encoder.training
    graphs = EntityGraphs.from_geometries([shapely.box(0.1, 0.1, 0.3, 0.2), shapely.Point(0.5, 0.5)])
    out = geometry(graphs.batch())
    out.sum().backward()
    assert all(p.grad is None for p in geometry.encoder.parameters())
    assert geometry.proj[0].weight.grad is not None


def test_modality_dropout_is_per_entity_and_never_both():
    torch.manual_seed(2)
    fusion = EntityFusion(dim=4, dropout=0.3).train()
    captured = []
    fusion.mlp.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    n = 20_000
    fusion(torch.ones(n, 4), torch.ones(n, 4), generator=torch.Generator().manual_seed(0))
    halves = captured[0].reshape(n, 2, 4)[:, :, 0]
    tag_off, geometry_off = (halves[:, 0] == 0), (halves[:, 1] == 0)
    assert not (tag_off & geometry_off).any()
    assert (tag_off | geometry_off).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert tag_off.float().mean().item() == pytest.approx(0.15, abs=0.01)
    # eval: nothing dropped; one modality only: nothing dropped, the other half zeros
    captured.clear()
    fusion.eval()(torch.ones(5, 4), torch.ones(5, 4))
    assert (captured[0] == 1).all()
    captured.clear()
    fusion.train()(torch.ones(5, 4), None)
    assert (captured[0][:, :4] == 1).all() and (captured[0][:, 4:] == 0).all()


def test_conditioning_is_noisy_in_training_only_and_never_in_place():
    torch.manual_seed(3)
    cond = Conditioning(dim=8)
    box = torch.tensor(np.tile([0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.1], (3, 1)), dtype=torch.float32)
    modality = torch.tensor([1, 1, 2])
    before = box.clone()
    cond.eval()
    a, b = cond(box, modality), cond(box, modality)
    torch.testing.assert_close(a, b)
    cond.train()
    c = cond(box, modality, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)
    assert torch.equal(box, before)  # the caller's min boxes are untouched
    assert not torch.allclose(a[0], a[2])  # the modality is part of the condition

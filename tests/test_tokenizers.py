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


def _image_batch(b=3, entities=4, patches=5, width=12):
    """A collated batch with entities (the last tile has none) and image tokens (the second
    tile has no image, the first a patch without data)."""
    torch.manual_seed(4)
    counts = [2, entities, 0]
    padding = torch.ones(b, entities, dtype=torch.bool)
    for i, n in enumerate(counts):
        padding[i, :n] = False
    valid = torch.ones(b, patches, dtype=torch.bool)
    valid[1] = False
    valid[0, 0] = False
    box = torch.tensor([[0, 0, 1, 0, 1, 1, 0, 1]], dtype=torch.float32).repeat(patches, 1) * 0.5
    return {"padding_mask": padding, "min_box": torch.rand(b, entities, 8),
            "modality": (~padding).long(), "tag_ids": torch.arange(sum(counts)) % 10,
            "tag_offsets": torch.arange(sum(counts)), "entity_batch": torch.repeat_interleave(torch.arange(b),
                                                                                              torch.tensor(counts)),
            "entity_slot": torch.cat([torch.arange(n) for n in counts]),
            "image_tokens": torch.randn(b, patches, width), "image_token_valid": valid, "image_token_box": box}


@pytest.mark.parametrize("with_tags", [True, False])
@pytest.mark.parametrize("image_global", [True, False])
def test_image_tokens_follow_the_entities_with_their_own_padding_and_modality(with_tags, image_global):
    from gjp.models.tokenizers import ImageTokens, TileTokenizer

    batch = _image_batch()
    tags = TagTokens(torch.randn(10, 6), dim=16) if with_tags else None
    tokenizer = TileTokenizer(16, tags, None, ImageTokens(12, 16), image_global=image_global).eval()
    tokens, conditions, padding = tokenizer(batch)
    p = 5 if image_global else 4
    assert tokens.shape == (3, 4 + p, 16) and conditions.shape == tokens.shape
    image_padding = ~batch["image_token_valid"][:, :p]
    assert torch.equal(padding[:, 4:], image_padding)      # no image, or a patch without data: padding
    entity_padding = batch["padding_mask"] if with_tags else torch.ones(3, 4, dtype=torch.bool)
    assert torch.equal(padding[:, :4], entity_padding)      # images alone: the entity slots are padding
    # an image token is its projected backbone token plus its condition (modality 2, its box)
    expected = tokenizer.images(batch["image_tokens"][2, :p]) + tokenizer.conditioning(
        batch["image_token_box"][:p], torch.full((p,), 2))
    torch.testing.assert_close(tokens[2, 4:], expected)


def test_a_tokenizer_needs_a_modality():
    from gjp.models.tokenizers import TileTokenizer

    with pytest.raises(ValueError, match="needs tags, geometry, images"):
        TileTokenizer(16, None, None, None)

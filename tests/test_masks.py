"""GeoJEPA's masks, over thousands of draws: targets are real tokens, context and targets
never overlap, the minimum context holds, area membership is exact on hand-made boxes,
strategies are drawn with their probabilities, and masks depend only on their seed."""

import numpy as np
import pytest

from gjp.pretrain.masks import STRATEGIES, MaskConfig, _area, draw_masks, mask_rng


def batch(rng, b=64, t=80, image_tokens=0):
    """Samples of 1..t-image_tokens entities (modality 1), then image tokens (modality 2)
    where asked, then padding; centres anywhere in the tile."""
    valid = np.zeros((b, t), dtype=bool)
    modality = np.zeros((b, t), dtype=np.int64)
    for i, n in enumerate(rng.integers(1, t - image_tokens + 1, b)):
        valid[i, :n] = True
        modality[i, :n] = 1
        if image_tokens:
            valid[i, n:n + image_tokens] = True
            modality[i, n:n + image_tokens] = 2
    centres = rng.random((b, t, 2))
    return valid, centres, modality


CONFIGS = {
    "default": MaskConfig(),
    "all": MaskConfig(strategies={"random": 0.25, "area": 0.25, "modality": 0.25, "contiguous": 0.25}),
    "big-targets": MaskConfig(strategies={"random": 0.5, "contiguous": 0.5}, random_size=0.45,
                              contiguous_size=0.45, min_context=0.3),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_context_and_targets_are_real_disjoint_and_the_context_is_large_enough(name):
    config = CONFIGS[name]
    data = np.random.default_rng(1)
    for draw in range(60):  # 60 batches of 64: 3,840 samples
        valid, centres, modality = batch(data, image_tokens=5 if draw % 2 else 0)
        m = draw_masks(valid, centres, modality, config, mask_rng(0, 0, draw))
        assert m.targets.shape == (64, config.targets, 80)
        assert not (m.context & ~valid).any() and not (m.targets & ~valid[:, None, :]).any()
        assert not (m.context[:, None, :] & m.targets).any()  # never the same token
        n = valid.sum(axis=1)
        assert (m.context.sum(axis=1) >= np.ceil(config.min_context * n - 1e-9)).all()
        has_targets = m.targets.any(axis=(1, 2))
        assert has_targets[n >= 2].all()  # every sample of 2+ tokens has something to predict


def test_strategies_are_drawn_with_their_probabilities():
    config = MaskConfig(strategies={"random": 0.2, "area": 0.6, "modality": 0.2})
    data = np.random.default_rng(2)
    counts = np.zeros(len(STRATEGIES))
    for draw in range(200):  # 12,800 samples
        valid, centres, modality = batch(data, t=20)
        m = draw_masks(valid, centres, modality, config, mask_rng(3, 1, draw))
        counts += np.bincount(m.strategy, minlength=len(STRATEGIES))
    share = dict(zip(STRATEGIES, counts / counts.sum()))
    # three standard deviations of a share at n = 12,800 are under 0.011
    assert share["random"] == pytest.approx(0.2, abs=0.011)
    assert share["area"] == pytest.approx(0.6, abs=0.011)
    assert share["modality"] == pytest.approx(0.2, abs=0.011)
    assert share["contiguous"] == 0


def test_probabilities_must_be_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        MaskConfig(strategies={"random": 0.25, "area": 0.25}).probabilities()
    with pytest.raises(ValueError, match="unknown masking strategy"):
        MaskConfig(strategies={"random": 0.5, "blocks": 0.5}).probabilities()


def test_random_and_contiguous_targets_have_their_size_and_shape():
    data = np.random.default_rng(4)
    for strategy in ("random", "contiguous"):
        config = MaskConfig(strategies={strategy: 1.0}, min_context=0.0)
        for draw in range(20):
            valid, centres, modality = batch(data)
            m = draw_masks(valid, centres, modality, config, mask_rng(0, 0, draw))
            want = np.maximum(1, np.floor(0.2 * valid.sum(axis=1)))
            assert (m.targets.sum(axis=2) == want[:, None]).all()
            if strategy == "contiguous":  # consecutive positions
                for row in m.targets.reshape(-1, m.targets.shape[2]):
                    where = np.flatnonzero(row)
                    assert (np.diff(where) == 1).all()


class FixedDraws:
    """A stand-in generator: ``uniform`` and ``random`` return the given arrays in turn."""

    def __init__(self, *arrays):
        self.arrays = list(arrays)

    def uniform(self, low, high, size):
        return self.arrays.pop(0)

    def random(self, size):
        return self.arrays.pop(0)


def test_area_membership_on_hand_made_boxes():
    # tokens at known centres; one box of a quarter of the tile, square (a = 1): 0.5 × 0.5
    centres = np.array([[[0.1, 0.1], [0.3, 0.3], [0.6, 0.6], [0.55, 0.55], [0.9, 0.1], [0.5, 0.5]]])
    valid = np.array([[True, True, True, True, True, False]])
    config = MaskConfig(area_size=0.25, margin=0.1)
    # lower-left corner at -0.1 + u · (1 + 0.2 - 0.5): u = 0.5 → 0.25, so the box is [0.25, 0.75]²
    targets = _area(valid, centres, 1, config, FixedDraws(np.ones((1, 1)), np.full((1, 1), 0.5),
                                                          np.full((1, 1), 0.5)))
    assert targets[0, 0].tolist() == [False, True, True, True, False, False]  # the padded token never
    # a box that catches nothing (all in the lower-left corner, tokens elsewhere) takes the nearest
    far = np.array([[[0.9, 0.9], [0.7, 0.8], [0.95, 0.2]]])
    targets = _area(np.ones((1, 3), bool), far, 1, config,
                    FixedDraws(np.ones((1, 1)), np.zeros((1, 1)), np.zeros((1, 1))))
    # the box is [-0.1, 0.4]², centre (0.15, 0.15): (0.95, 0.2) is nearest (0.64 against 0.73, 1.13)
    assert targets[0, 0].tolist() == [False, False, True]
    # the aspect ratio: a = 2 gives width / height = 4 at the same area
    wide = _area(np.ones((1, 2), bool), np.array([[[0.05, 0.5], [0.5, 0.05]]]), 1, MaskConfig(area_size=0.16),
                 FixedDraws(np.full((1, 1), 2.0), np.full((1, 1), 0.0), np.full((1, 1), 0.5)))
    # height = 0.4 / 2 = 0.2, width = 0.16 / 0.2 = 0.8 from x = -0.1; y from -0.1 + 0.5 · 1.0 = 0.4
    assert wide[0, 0].tolist() == [True, False]


def test_the_modality_strategy_makes_one_modality_the_context():
    config = MaskConfig(strategies={"modality": 1.0}, min_context=0.0)
    data = np.random.default_rng(5)
    valid, centres, modality = batch(data, image_tokens=10)
    m = draw_masks(valid, centres, modality, config, mask_rng(0, 0, 0))
    for i in range(len(valid)):
        kinds = set(modality[i][m.context[i]].tolist())
        assert len(kinds) == 1  # the context is exactly one modality …
        target_kinds = [set(modality[i][m.targets[i, j]].tolist()) for j in range(config.targets)]
        assert [k for k in target_kinds if k] == [{2} if kinds == {1} else {1}]  # … the other is the target
    # one modality only: contiguous runs instead
    single = draw_masks(valid & (modality == 1), centres, modality, config, mask_rng(0, 0, 0))
    assert single.targets.any(axis=2).all()


def test_masks_depend_only_on_seed_epoch_and_batch():
    data = np.random.default_rng(6)
    valid, centres, modality = batch(data)
    config = CONFIGS["all"]
    a = draw_masks(valid, centres, modality, config, mask_rng(7, 2, 11))
    b = draw_masks(valid, centres, modality, config, mask_rng(7, 2, 11))
    c = draw_masks(valid, centres, modality, config, mask_rng(7, 2, 12))
    d = draw_masks(valid, centres, modality, config, mask_rng(7, 3, 11))
    assert np.array_equal(a.targets, b.targets) and np.array_equal(a.context, b.context)
    assert not np.array_equal(a.targets, c.targets) and not np.array_equal(a.targets, d.targets)


def test_the_collator_masks_do_not_depend_on_the_number_of_workers(monaco_dataset):
    import torch

    from gjp.dataset.loader import LengthGroupedBatchSampler, TileDataset
    from gjp.pretrain.masks import MaskingCollator

    _, _, path = monaco_dataset
    ds = TileDataset(path)
    collator = MaskingCollator(MaskConfig(strategies={"random": 0.5, "area": 0.5}), seed=3)

    def masks(workers):
        sampler = LengthGroupedBatchSampler(ds.entity_counts, 8, seed=0)
        sampler.set_epoch(2)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collator, num_workers=workers)
        return [(tuple(b["names"]), b["context_mask"], b["target_masks"]) for b in loader]

    alone, shared = masks(0), masks(2)
    assert len(alone) == len(shared) > 3
    for (names, context, targets), (names2, context2, targets2) in zip(alone, shared):
        assert names == names2 and torch.equal(context, context2) and torch.equal(targets, targets2)
        assert not (context[:, None, :] & targets).any()



def test_a_crop_keeps_the_entities_nearest_a_random_one():
    from gjp.pretrain.masks import crop

    rng = np.random.default_rng(0)
    centres = rng.random((300, 2))
    kept = crop(centres, 40, np.random.default_rng(5))
    assert len(kept) == 40 and np.array_equal(kept, np.sort(kept))
    # a disc: every entity left out is at least as far from the anchor as every one kept
    anchor = centres[np.random.default_rng(5).integers(300)]
    distance = np.square(centres - anchor).sum(axis=1)
    out = np.setdiff1d(np.arange(300), kept)
    assert distance[kept].max() <= distance[out].min()
    assert np.array_equal(kept, crop(centres, 40, np.random.default_rng(5)))
    assert np.array_equal(crop(centres[:30], 40, rng), np.arange(30))


def test_cropped_tiles_keep_their_entities_whole(monaco_dataset):
    import torch

    from gjp.dataset.loader import BatchIndices, TileDataset
    from gjp.pretrain.masks import MaskingCollator

    _, _, path = monaco_dataset
    ds = TileDataset(path)
    counts = ds.entity_counts
    big, small = int(np.argmax(counts)), int(np.flatnonzero((counts > 3) & (counts <= 20))[0])
    limit = 20
    sample = ds[big]
    part = sample.select(np.array([3, 0, 7]))
    for new, old in enumerate([3, 0, 7]):  # each kept entity's tags, vertices and edges, unchanged
        assert np.array_equal(part.tag_ids[part.tag_offsets[new]:part.tag_offsets[new + 1]],
                              sample.tag_ids[sample.tag_offsets[old]:sample.tag_offsets[old + 1]])
        assert np.array_equal(part.nodes[part.node_offsets[new]:part.node_offsets[new + 1]],
                              sample.nodes[sample.node_offsets[old]:sample.node_offsets[old + 1]])
        assert np.array_equal(
            part.visibility_edges[part.visibility_offsets[new]:part.visibility_offsets[new + 1]],
            sample.visibility_edges[sample.visibility_offsets[old]:sample.visibility_offsets[old + 1]])
    assert np.array_equal(part.min_box, sample.min_box[[3, 0, 7]])

    config = MaskConfig(strategies={"random": 0.5, "area": 0.5})
    indices = BatchIndices([big, small], epoch=1, number=4)
    cropped = MaskingCollator(config, seed=3, max_entities=limit)(ds.__getitems__(indices))
    again = MaskingCollator(config, seed=3, max_entities=limit)(ds.__getitems__(indices))
    assert counts[big] > limit and (~cropped["padding_mask"]).sum(dim=1).tolist() == [limit, counts[small]]
    assert torch.equal(cropped["min_box"], again["min_box"]) and torch.equal(cropped["target_masks"],
                                                                           again["target_masks"])
    # the big tile's window: the entities kept are ds[big]'s, whole
    kept = {tuple(b) for b in cropped["min_box"][0, :limit].reshape(limit, -1).tolist()}
    assert kept <= {tuple(b) for b in sample.min_box.reshape(len(sample.kind), -1).tolist()}
    with pytest.raises(ValueError, match="max_entities"):
        MaskingCollator(config, max_entities=-1)

"""GeoJEPA's building blocks: the transformer's padding and batch invariance, the loss
parts against hand computation, and the EMA update's closed form."""

import copy

import numpy as np
import pytest
import torch

from gjp.models.objective import ema_update, prediction_loss, vicreg_terms
from gjp.models.transformer import Encoder, TransformerConfig


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder(TransformerConfig(dim=32, depth=2, heads=4, registers=2)).eval()


def test_real_tokens_ignore_padding_and_the_rest_of_the_batch(encoder):
    torch.manual_seed(1)
    x = torch.randn(3, 10, 32)
    padding = torch.zeros(3, 10, dtype=torch.bool)
    padding[0, 6:] = True
    padding[1, 3:] = True
    with torch.no_grad():
        out = encoder(x, padding)
        # other padding content, more padding columns, and each sample alone: same real outputs
        noisy = x.clone()
        noisy[padding] = 1e3 * torch.randn(int(padding.sum()), 32)
        wider = torch.cat([noisy, torch.randn(3, 5, 32)], dim=1)
        wider_padding = torch.cat([padding, torch.ones(3, 5, dtype=torch.bool)], dim=1)
        out_wider = encoder(wider, wider_padding)
        for i in range(3):
            n = int((~padding[i]).sum())
            alone = encoder(x[i:i + 1, :n], padding[i:i + 1, :n])
            torch.testing.assert_close(out[i, :n], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out_wider[i, :n], out[i, :n], atol=1e-5, rtol=1e-5)
    assert out.shape == (3, 10, 32) and torch.isfinite(out).all()


def test_prediction_loss_is_the_mean_over_real_target_tokens():
    predicted = torch.tensor([[[0.0, 0.0], [3.0, -3.0]], [[0.5, -0.5], [9.0, 9.0]]])
    target = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[1.0, 3.0], [0.0, 0.0]]])
    real = torch.tensor([[True, True], [True, False]])
    # LayerNorm of [2, 0] → [1, -1]; of [1, 1] → [0, 0]; of [1, 3] → [-1, 1]
    def smooth_l1(d, beta):
        d = abs(d)
        return 0.5 * d * d / beta if d < beta else d - 0.5 * beta
    hand = [(smooth_l1(0 - 1, 1) + smooth_l1(0 + 1, 1)) / 2,
            (smooth_l1(3, 1) + smooth_l1(-3, 1)) / 2,
            (smooth_l1(0.5 + 1, 1) + smooth_l1(-0.5 - 1, 1)) / 2]
    loss = prediction_loss(predicted, target, real, beta=1.0)
    assert float(loss) == pytest.approx(sum(hand) / 3, abs=1e-4)  # the padded slot (9, 9) never counts
    loss2 = prediction_loss(predicted, target, real, beta=2.0)
    hand2 = [(smooth_l1(-1, 2) + smooth_l1(1, 2)) / 2, (smooth_l1(3, 2) + smooth_l1(-3, 2)) / 2,
             (smooth_l1(1.5, 2) + smooth_l1(-1.5, 2)) / 2]
    assert float(loss2) == pytest.approx(sum(hand2) / 3, abs=1e-4)


def test_vicreg_terms_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # dim 0 spread (std 2), dim 1 collapsed
    variance, covariance = vicreg_terms(x, eps=0.0)
    assert float(variance) == pytest.approx((0 + 1) / 2)      # relu(1 - 2) = 0, relu(1 - 0) = 1
    assert float(covariance) == pytest.approx(0.0)            # nothing co-varies with a constant
    y = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])              # perfectly correlated: cov = 2 off the diagonal
    assert float(vicreg_terms(y, eps=0.0)[1]) == pytest.approx((2 * 2 ** 2) / 2)


def test_ema_update_has_its_closed_form():
    torch.manual_seed(2)
    online = torch.nn.Linear(4, 3)
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in target.parameters():
            p.normal_()
    start = [p.clone() for p in target.parameters()]
    m, steps = 0.9, 7
    for _ in range(steps):
        ema_update(target, online, m)
    for t, t0, o in zip(target.parameters(), start, online.parameters()):
        torch.testing.assert_close(t, m ** steps * t0 + (1 - m ** steps) * o, atol=1e-6, rtol=1e-6)
        assert not t.requires_grad or t.grad is None


def tiny_batch(seed=0, b=4, t=12, k=3):
    from gjp.pretrain.masks import MaskConfig, draw_masks, mask_rng

    g = torch.Generator().manual_seed(seed)
    tokens, conditions = torch.randn(b, t, 64, generator=g), torch.randn(b, t, 64, generator=g)
    padding = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate([12, 7, 5, 9][:b]):
        padding[i, n:] = True
    rng = np.random.default_rng(seed)
    masks = draw_masks(~padding.numpy(), rng.random((b, t, 2)), np.where(padding.numpy(), 0, 1),
                       MaskConfig(targets=k), mask_rng(0, 0, seed))
    return tokens, conditions, padding, torch.from_numpy(masks.context), torch.from_numpy(masks.targets)


def test_a_geojepa_step_trains_the_context_side_only():
    from gjp.models.geojepa import GeoJepa, GeoJepaConfig

    torch.manual_seed(0)
    model = GeoJepa(GeoJepaConfig.preset("tiny")).train()
    assert not model.target_encoder.training
    out = model(*tiny_batch())
    assert torch.isfinite(out["loss"]) and out["target_tokens"] > 0 and out["context_tokens"] > 0
    out["loss"].backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.context_encoder.blocks[0].attention.qkv.weight.grad is not None
    assert model.predictor.mask_token.grad is not None
    before = [p.clone() for p in model.target_encoder.parameters()]
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(0.1)
    model.update_target(0.5)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.target_encoder.parameters())]
    assert all(moved)


def test_the_loss_falls_on_a_tiny_data_set():
    from gjp.models.geojepa import GeoJepa, GeoJepaConfig
    from gjp.pretrain.schedules import ema_momentum

    torch.manual_seed(1)
    model = GeoJepa(GeoJepaConfig.preset("tiny")).train()
    batches = [tiny_batch(seed) for seed in range(4)]
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(60):
        out = model(*batches[step % 4])
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        model.update_target(ema_momentum(step, 60, start=0.99, end=0.999))
        losses.append(float(out["prediction"]))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])


def test_tile_vectors_pool_the_residual_stream_at_pool_layer_or_the_output():
    """``pool_layer`` k pools the target encoder's residual stream after k blocks, before
    any norm (0: its input tokens); None pools its output. The outputs, which entity
    vectors are, do not change with it, and a saved config without it pools the output."""
    from dataclasses import replace

    from gjp.models.geojepa import GeoJepa, GeoJepaConfig, pool_tiles

    torch.manual_seed(3)
    model = GeoJepa(GeoJepaConfig.preset("tiny")).eval()
    tokens, _, padding, _, _ = tiny_batch()
    encoder = model.target_encoder
    attend = ~padding[:, None, None, :]
    after = [tokens]
    for block in encoder.blocks:
        after.append(block(after[-1], attend))
    output = encoder.norm(after[-1])
    assert model.config.pool_layer == 1
    for layer in (None, 0, 1, 2):
        model.config = replace(model.config, pool_layer=layer)
        pooled, out = model.pooled_tokens(tokens, padding)
        torch.testing.assert_close(out, output)
        torch.testing.assert_close(pooled, output if layer is None else after[layer])
        vectors, _ = model.embed(tokens, padding)
        torch.testing.assert_close(vectors, pool_tiles(pooled, padding))  # the centre is zero until pretrained
    saved = GeoJepaConfig.preset("tiny").to_dict()
    del saved["pool_layer"]
    assert GeoJepaConfig(**saved).pool_layer is None
    for bad in (3, -1, 1.5):
        with pytest.raises(ValueError, match="pool_layer"):
            GeoJepaConfig.preset("tiny", pool_layer=bad)


def test_a_tile_vector_does_not_depend_on_its_batch():
    from gjp.models.geojepa import GeoJepa, GeoJepaConfig

    torch.manual_seed(2)
    model = GeoJepa(GeoJepaConfig.preset("tiny")).eval()
    tokens, _, padding, _, _ = tiny_batch()
    vectors, _ = model.embed(tokens, padding)
    for i in range(4):
        n = int((~padding[i]).sum())
        alone, _ = model.embed(tokens[i:i + 1, :n], padding[i:i + 1, :n])
        torch.testing.assert_close(vectors[i], alone[0], atol=1e-5, rtol=1e-5)

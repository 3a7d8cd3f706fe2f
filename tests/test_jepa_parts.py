"""GeoJEPA's building blocks: the transformer's padding and batch invariance, the loss
parts against hand computation, and the EMA update's closed form."""

import copy

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

"""Schedules as pure functions of the step, checked at known steps."""

import math

import pytest

from gjp.pretrain.schedules import ema_momentum, learning_rate, weight_decay


def test_learning_rate_warms_up_from_a_tenth_then_follows_a_cosine():
    total, peak = 1000, 1e-3
    assert learning_rate(0, total, peak) == pytest.approx(1e-4)          # 0.1 × peak
    assert learning_rate(50, total, peak) == pytest.approx(5.5e-4)       # halfway up
    assert learning_rate(100, total, peak) == pytest.approx(peak)        # the end of the warm-up
    middle = 100 + (total - 1 - 100) / 2
    assert learning_rate(int(middle), total, peak) == pytest.approx((peak + 1e-6) / 2, rel=1e-2)
    assert learning_rate(total - 1, total, peak) == pytest.approx(1e-6)  # down to the floor
    rates = [learning_rate(s, total, peak) for s in range(100, total)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_weight_decay_and_momentum_ramp_between_their_ends():
    total = 501
    assert weight_decay(0, total) == pytest.approx(0.04) and weight_decay(500, total) == pytest.approx(0.4)
    assert weight_decay(250, total) == pytest.approx(0.22)               # a cosine ramp is at the middle there
    assert ema_momentum(0, total) == pytest.approx(0.997) and ema_momentum(500, total) == pytest.approx(0.99999)
    assert ema_momentum(250, total) == pytest.approx((0.997 + 0.99999) / 2)
    assert ema_momentum(10_000, total) == pytest.approx(0.99999)         # past the end: held
    assert math.isclose(weight_decay(-5, total), 0.04)

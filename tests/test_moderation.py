"""Interrupt moderation that adapts to the arrival rate (``_receiver.moderation_pause``): no
pause where fewer than MODERATE_FROM frames would arrive within the latency budget, the
budget where more do, and never longer than MODERATE_BATCH frames take to arrive."""

import pytest

from udpcap_ctypes._receiver import MODERATE_BATCH, MODERATE_FROM, moderation_pause

BUDGET = 0.0005


@pytest.mark.parametrize("rate", [0.0, 10.0, 1000.0, MODERATE_FROM / BUDGET * 0.99])
def test_no_pause_below_the_threshold(rate):
    assert moderation_pause(rate, BUDGET) == 0.0


@pytest.mark.parametrize("rate", [MODERATE_FROM / BUDGET, 10_000.0, 30_000.0, 100_000.0])
def test_the_budget_at_user_rates(rate):
    assert moderation_pause(rate, BUDGET) == BUDGET


def test_short_pauses_at_very_high_rates_keep_batches_bounded():
    for rate in (200_000.0, 1e6, 1e7):
        pause = moderation_pause(rate, BUDGET)
        assert 0.0 < pause < BUDGET
        assert rate * pause == pytest.approx(MODERATE_BATCH)


def test_budget_zero_turns_moderation_off():
    for rate in (0.0, 1e3, 1e5, 1e9):
        assert moderation_pause(rate, 0.0) == 0.0


def test_pause_never_exceeds_the_budget_and_falls_with_rate():
    rates = [10.0 ** (k / 4.0) for k in range(0, 36)]
    pauses = [moderation_pause(rate, BUDGET) for rate in rates]
    assert all(0.0 <= pause <= BUDGET for pause in pauses)
    active = [pause for pause in pauses if pause]
    assert active and all(a >= b for a, b in zip(active, active[1:]))

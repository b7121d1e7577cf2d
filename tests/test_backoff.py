"""The one backoff every retry loop uses: doubling, capped, jittered within bounds, reset."""

from __future__ import annotations

from pdp.backoff import Backoff, delay_after


def test_delays_double_up_to_the_ceiling_and_reset() -> None:
    b = Backoff(0.05, 0.3)
    assert [b.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    b.reset()
    assert b.next() == 0.05


def test_jitter_stays_within_its_share() -> None:
    delays = [delay_after(3, 1.0, 100.0, jitter=0.2) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert len(set(delays)) > 1

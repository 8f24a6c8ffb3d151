"""The loop-lag saturation detector (control/loop_lag.py), fed synthetic samples on a made-up
timeline: threshold, window, hysteresis, recovery. One test runs the real task, only to see it
feed samples and stop cleanly."""

from __future__ import annotations

import asyncio
import logging

import pytest

from control.loop_lag import INTERVAL, LagPolicy, LoopLag, running_loop_lag

pytestmark = pytest.mark.timeout(10)

POLICY = LagPolicy(shed_above=0.060, recover_below=0.030, window=2.0, recover_after=5.0)


def feed(lag: LoopLag, start: float, seconds: float, late: float, step: float = INTERVAL) -> float:
    """Samples of `late` every `step` from `start` for `seconds`; returns the time reached.
    True from `observe` must agree with a changed `saturated`."""
    now, ticks = start, round(seconds / step)
    for _ in range(ticks):
        now += step
        before = lag.saturated
        changed = lag.observe(now, late)
        assert changed == (lag.saturated != before)
    return now


def test_sustained_lag_over_the_threshold_saturates() -> None:
    lag = LoopLag(POLICY)
    now = feed(lag, 0.0, 5.0, 0.002)
    assert not lag.saturated
    now = feed(lag, now, 0.5, 0.080)  # not yet half the 2 s window
    assert not lag.saturated
    now = feed(lag, now, 0.6, 0.080)  # now more than half of it
    assert lag.saturated
    assert lag.typical() == pytest.approx(0.080)


def test_lag_just_under_the_threshold_does_not_saturate() -> None:
    lag = LoopLag(POLICY)
    feed(lag, 0.0, 30.0, 0.059)
    assert not lag.saturated


def test_one_long_stall_is_not_saturation() -> None:
    lag = LoopLag(POLICY)
    now = feed(lag, 0.0, 3.0, 0.001)
    # A 2.5 s stall (a GC pause, one slow callback): one sample, the 2 s window holds no other.
    now += 2.5
    assert not lag.observe(now, 2.5)
    now = feed(lag, now, 3.0, 0.001)
    assert not lag.saturated


def test_occasional_spikes_under_load_are_not_saturation() -> None:
    """A busy loop that still keeps up: one tick in three late by a burst of frames."""
    lag = LoopLag(POLICY)
    now = 0.0
    for i in range(600):
        now += INTERVAL
        lag.observe(now, 0.150 if i % 3 == 0 else 0.004)
    assert not lag.saturated


def test_sparse_samples_under_heavy_lag_still_saturate() -> None:
    """A loop seconds behind wakes the monitor rarely: the last `min_samples` decide."""
    lag = LoopLag(POLICY)
    now = feed(lag, 0.0, 2.0, 0.001)
    now = feed(lag, now, 5 * 1.2, 1.2, step=1.2)  # five samples, 1.2 s apart
    assert lag.saturated


def test_recovery_needs_calm_for_recover_after(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ava.load")
    lag = LoopLag(POLICY)
    now = feed(lag, 0.0, 3.0, 0.100)
    assert lag.saturated
    # The window first has to forget the lag (~1 s for its median), then 5 s of calm.
    now = feed(lag, now, 5.0, 0.005)
    assert lag.saturated
    now = feed(lag, now, 1.5, 0.005)
    assert not lag.saturated
    # One line each way, not one per sample.
    lines = [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "event loop saturated"),
        (logging.INFO, "event loop recovered"),
    ]


def test_lag_between_the_thresholds_holds_saturation() -> None:
    """Hysteresis: under the shed threshold but over the recovery one is not recovered."""
    lag = LoopLag(POLICY)
    now = feed(lag, 0.0, 3.0, 0.100)
    now = feed(lag, now, 30.0, 0.045)
    assert lag.saturated
    feed(lag, now, 8.0, 0.010)
    assert not lag.saturated


def test_a_burst_of_lag_during_recovery_restarts_the_calm_period() -> None:
    lag = LoopLag(POLICY)
    now = feed(lag, 0.0, 3.0, 0.100)
    now = feed(lag, now, 4.0, 0.005)  # the median is calm from ~1 s on: 3 s of the needed 5
    now = feed(lag, now, 1.5, 0.040)  # median back over recover_below at ~5 s: the calm is lost
    assert lag.saturated
    now = feed(lag, now, 4.5, 0.005)  # calm again from ~6.5 s, not yet for 5 s
    assert lag.saturated
    feed(lag, now, 2.5, 0.005)
    assert not lag.saturated


def test_no_flapping_around_the_threshold() -> None:
    """Lag wandering around 60 ms: saturated once, and it stays so, never recovered."""
    lag = LoopLag(POLICY)
    changes = 0
    now = 0.0
    for i in range(2000):
        now += INTERVAL
        changes += lag.observe(now, 0.055 if (i // 20) % 2 else 0.065)
    assert lag.saturated and changes == 1


def test_disabled_never_saturates() -> None:
    assert LagPolicy.from_ms(0) is None
    lag = LoopLag(None)
    feed(lag, 0.0, 10.0, 5.0)
    assert not lag.saturated and lag.typical() is None


def test_policy_from_the_setting() -> None:
    policy = LagPolicy.from_ms(60)
    assert policy is not None
    assert (policy.shed_above, policy.recover_below) == (0.060, 0.030)


def test_a_sample_older_than_the_newest_is_ignored() -> None:
    lag = LoopLag(POLICY)
    feed(lag, 100.0, 3.0, 0.100)
    assert lag.saturated
    # Calm samples stamped in the past (a second feeder) cannot end the saturation.
    feed(lag, 0.0, 20.0, 0.0)
    assert lag.saturated
    assert lag.typical() == pytest.approx(0.100)


async def test_the_task_feeds_samples_and_stops_with_its_block() -> None:
    got: list[float] = []
    fed = asyncio.Event()

    def record(late: float) -> None:
        got.append(late)
        if len(got) >= 3:
            fed.set()

    lag = LoopLag(POLICY)
    async with running_loop_lag(lag, record, interval=0.01):
        await asyncio.wait_for(fed.wait(), 5)
    assert all(late >= 0 for late in got)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "ava-loop-lag"]

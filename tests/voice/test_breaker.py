"""Circuit breaker state machine, on explicit time."""

from __future__ import annotations

import pytest

from voice.breaker import BreakerBoard, BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cool_down=10.0)
    breaker.record_failure(0.0)
    breaker.record_failure(1.0)
    breaker.record_success(2.0)  # a success resets the count
    breaker.record_failure(3.0)
    breaker.record_failure(4.0)
    assert breaker.state(4.0) is BreakerState.CLOSED and breaker.allow(4.0)
    breaker.record_failure(5.0)
    assert breaker.state(5.0) is BreakerState.OPEN
    assert not breaker.allow(14.9)


def test_half_open_admits_one_trial_then_closes_on_success() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cool_down=10.0)
    breaker.record_failure(0.0)
    assert breaker.state(10.0) is BreakerState.HALF_OPEN
    assert breaker.allow(10.0)
    assert not breaker.allow(10.5)  # the trial is out
    breaker.record_success(11.0)
    assert breaker.state(11.0) is BreakerState.CLOSED and breaker.allow(11.0)


def test_failed_trial_reopens_for_a_full_cool_down() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cool_down=10.0)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    assert breaker.allow(10.0)
    breaker.record_failure(10.5)
    assert breaker.state(19.0) is BreakerState.OPEN
    assert not breaker.allow(20.0)
    assert breaker.allow(20.5)


def test_a_lost_trial_is_retried_after_another_cool_down() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cool_down=5.0)
    breaker.record_failure(0.0)
    assert breaker.allow(5.0)  # trial whose outcome is never reported (its call ended)
    assert not breaker.allow(9.0)
    assert breaker.allow(10.0)


def test_board_keeps_one_breaker_per_key() -> None:
    board = BreakerBoard(failure_threshold=1, cool_down=1.0)
    board.get("llm/openai/a").record_failure(0.0)
    assert board.get("llm/openai/a") is board.get("llm/openai/a")
    assert board.states(0.5) == {"llm/openai/a": BreakerState.OPEN}
    assert board.get("llm/openai/b").allow(0.5)


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerBoard(cool_down=0)

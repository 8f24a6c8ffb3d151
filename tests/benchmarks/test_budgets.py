"""The benchmark's bookkeeping: aggregation of calls, budget checks, peer ratios, caller spacing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from benchmarks.callers import CallResult
from benchmarks.capacity import budget_breaks, service_breaks, stagger_for, sweep_ends
from benchmarks.compare import ratios, render_compare
from benchmarks.latency import Aggregate


def call(**overrides: Any) -> CallResult:
    fields: dict[str, Any] = {
        "error": None,
        "seconds": 30.0,
        "greeting": 0.01,
        "voice_to_voice": [0.8, 0.9],
        "barge_in_to_clear": [0.23],
        "barge_in_to_silence": [0.24],
        "barge_ins_without_clear": 0,
        "gaps": [],
        "unanswered_turns": 0,
        "server": {"server": [0.001, 0.002]},
    }
    fields.update(overrides)
    return CallResult(**fields)


def step(calls: list[CallResult], cpu: float, rss_mb: float) -> dict[str, Any]:
    aggregate = Aggregate(server_cpu_seconds=cpu, rss_per_call_bytes=rss_mb * 2**20)
    for result in calls:
        aggregate.add(result)
    return aggregate.to_json()


def test_aggregate_counts_and_cpu_per_call_minute() -> None:
    data = step([call(), call(error="boom", gaps=[0.08], unanswered_turns=1)], cpu=0.5, rss_mb=2)
    assert data["calls"] == 2 and data["failedCalls"] == 1 and data["unansweredTurns"] == 1
    assert data["voiceToVoiceMs"]["count"] == 4 and data["voiceToVoiceMs"]["p50"] == 850.0
    assert data["outboundGapsOver60ms"] == 1
    assert data["callMinutes"] == 1.0  # two 30 s calls
    assert data["serverCpuSecondsPerCallMinute"] == 0.5
    assert data["serverBreakdownMs"]["server"]["max"] == 2.0
    assert data["serverRssPerCallMB"] == 2.0


def test_refused_calls_are_counted_apart_from_failures_and_break_the_step() -> None:
    refused = call(voice_to_voice=[], greeting=None, server={}, refused=True)
    data = step([call(), refused, refused], cpu=0.5, rss_mb=2)
    assert data["calls"] == 3 and data["failedCalls"] == 0 and data["refusedCalls"] == 2
    assert data["voiceToVoiceMs"]["count"] == 2  # the call that was taken
    assert budget_breaks(data) == ["2 calls refused (503: not taking calls)"]


def test_a_step_within_budget_breaks_nothing() -> None:
    assert budget_breaks(step([call()] * 3, cpu=0.9, rss_mb=4.9)) == []  # 0.6 s per call-minute


def test_each_budget_is_checked() -> None:
    slow = call(server={"server": [0.001] * 98 + [0.2, 0.2]})
    data = step([slow, call(gaps=[0.07]), call(barge_ins_without_clear=1)], cpu=1.2, rss_mb=6)
    breaks = budget_breaks(data)
    assert any(b.startswith("server-added p99") for b in breaks)
    assert "1 outbound gaps > 60 ms" in breaks and "1 barge-ins never cleared" in breaks
    assert "CPU 0.8 s per call-minute > 0.6" in breaks
    assert "RSS 6.0 MB per call > 5.0" in breaks
    # cost alone does not stop a sweep; what a caller would notice does
    assert not any(b.startswith(("CPU", "RSS")) for b in service_breaks(breaks))
    assert service_breaks(["CPU 0.7 s per call-minute > 0.6"]) == []


def test_a_sweep_stops_at_a_service_break_unless_told_to_keep_going() -> None:
    broken = {"budgetBreaks": ["1 calls failed", "CPU 0.9 s per call-minute > 0.6"]}
    costly = {"budgetBreaks": ["CPU 0.9 s per call-minute > 0.6"]}
    assert sweep_ends(broken, keep_going=False, elapsed=10, cap=None)
    assert not sweep_ends(broken, keep_going=True, elapsed=10, cap=None)
    assert not sweep_ends(costly, keep_going=False, elapsed=10, cap=None)  # cost alone: go on
    assert sweep_ends(costly, keep_going=True, elapsed=601, cap=600)  # the time cap always holds


def test_starts_are_spread_but_bounded() -> None:
    assert stagger_for(1) == 0.0
    assert stagger_for(11) == pytest.approx(2.0)
    assert stagger_for(1000) == 15.0


def side(v2v_p50: float, cpu: float) -> dict[str, Any]:
    latency = step([call(voice_to_voice=[v2v_p50])], cpu=0.1, rss_mb=1)
    load = step([call()], cpu=cpu * 0.5, rss_mb=1)  # one 30 s call: cpu per call-minute = cpu
    return {"latency": latency, "load": load}


def test_ratios_are_ava_over_peer() -> None:
    ava, peer = side(0.6, 0.2), side(1.2, 4.0)
    result = ratios(ava, peer)
    assert result["voiceToVoiceP50"] == 0.5
    assert result["cpuPerCallMinute"] == 0.05
    assert result["rssPerCall"] == 1.0
    broken = copy.deepcopy(peer)
    broken["latency"]["voiceToVoiceMs"] = None  # the peer never answered
    assert ratios(ava, broken)["voiceToVoiceP50"] is None
    sides = {"ava": ava, "pipecat": peer}
    table = render_compare({"command": "c", "peer": "pipecat", "sides": sides, "ratios": result})
    assert "| voice-to-voice p50 (ms) | 600.0 | 1200.0 |" in table

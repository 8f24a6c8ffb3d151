"""`ava bench latency`: simulated Twilio callers against a server process, one call at a time.

Each call says the script's utterances (real speech, synthesized with the offline voice), the
last one barging into the previous answer; the caller's trace gives what the phone measured and
the server's call record gives where each turn's time went. `Aggregate` turns the calls of one
run into the reported numbers; the capacity sweep and the peer comparison use it too.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.callers import CallerJob, CallResult, run_callers
from benchmarks.stack import run_stack
from benchmarks.stats import summarize

__all__ = ["Aggregate", "load_conditions", "ms", "render_markdown", "run_latency"]

STAGES = ("voice_to_voice", "endpointing", "stt", "llm_ttft", "tts_ttfb", "server")


def ms(samples: Sequence[float]) -> dict[str, float | int] | None:
    summary = summarize(samples)
    return summary.as_ms() if summary else None


def load_conditions() -> dict[str, Any]:
    """What else the machine was doing: the benchmark's numbers mean little without it."""
    one, five, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "loadAverage1m": round(one, 2),
        "loadAverage5m": round(five, 2),
    }


@dataclass(slots=True)
class Aggregate:
    """Every call of one run (or one capacity step) and the server's resource use meanwhile."""

    calls: int = 0
    failed: int = 0
    refused: int = 0  # turned away (503) by a service not taking calls: not failures
    greeting: list[float] = field(default_factory=list)
    voice_to_voice: list[float] = field(default_factory=list)
    barge_in_to_clear: list[float] = field(default_factory=list)
    barge_in_to_silence: list[float] = field(default_factory=list)
    barge_ins_without_clear: int = 0
    gaps: list[float] = field(default_factory=list)
    unanswered_turns: int = 0
    server: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    call_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    caller_cpu_seconds: float = 0.0
    provider_cpu_seconds: float = 0.0
    rss_per_call_bytes: float | None = None

    def add(self, result: CallResult) -> None:
        self.calls += 1
        if result.error is not None:
            self.failed += 1
        if result.refused:
            self.refused += 1
        if result.greeting is not None:
            self.greeting.append(result.greeting)
        self.voice_to_voice += result.voice_to_voice
        self.barge_in_to_clear += result.barge_in_to_clear
        self.barge_in_to_silence += result.barge_in_to_silence
        self.barge_ins_without_clear += result.barge_ins_without_clear
        self.gaps += result.gaps
        self.unanswered_turns += result.unanswered_turns
        self.call_seconds += result.seconds
        for stage, values in result.server.items():
            self.server.setdefault(stage, []).extend(values)

    @property
    def cpu_per_call_minute(self) -> float:
        return self.server_cpu_seconds / max(self.call_seconds / 60, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failedCalls": self.failed,
            "refusedCalls": self.refused,
            "unansweredTurns": self.unanswered_turns,
            "greetingMs": ms(self.greeting),
            "voiceToVoiceMs": ms(self.voice_to_voice),
            "bargeInToClearMs": ms(self.barge_in_to_clear),
            "bargeInToSilenceMs": ms(self.barge_in_to_silence),
            "bargeInsWithoutClear": self.barge_ins_without_clear,
            "outboundGapsOver60ms": len(self.gaps),
            "serverBreakdownMs": {stage: ms(v) for stage, v in self.server.items() if v},
            "callMinutes": round(self.call_seconds / 60, 3),
            "serverCpuSecondsPerCallMinute": round(self.cpu_per_call_minute, 4),
            "callerCpuSeconds": round(self.caller_cpu_seconds, 2),
            "providerCpuSeconds": round(self.provider_cpu_seconds, 2),
            "serverRssPerCallMB": (
                None
                if self.rss_per_call_bytes is None
                else round(self.rss_per_call_bytes / 2**20, 2)
            ),
            "samples": {
                "voiceToVoice": self.voice_to_voice,
                "greeting": self.greeting,
                "bargeInToClear": self.barge_in_to_clear,
                "server": {stage: v for stage, v in self.server.items() if v},
            },
        }


def _row(name: str, summary: dict[str, float | int] | None) -> str | None:
    if not summary:
        return None
    return (
        f"| {name} | {summary['count']} | {summary['p50']} | {summary['p95']} "
        f"| {summary['p99']} | {summary['max']} |"
    )


def render_markdown(result: dict[str, Any]) -> str:
    rows = [
        ("greeting (start → first audio)", result["greetingMs"]),
        ("voice-to-voice (phone)", result["voiceToVoiceMs"]),
        ("barge-in: onset → clear", result["bargeInToClearMs"]),
        ("barge-in: onset → assistant silent", result["bargeInToSilenceMs"]),
    ]
    rows += [(f"server: {k}", v) for k, v in result["serverBreakdownMs"].items()]
    lines = [
        f"`{result['command']}` — profile `{result['profile']}`, {result['calls']} calls, "
        f"{result['failedCalls']} failed, {result['unansweredTurns']} unanswered turns, "
        f"{result['outboundGapsOver60ms']} outbound gaps > 60 ms, server CPU "
        f"{result['serverCpuSecondsPerCallMinute']} s per call-minute",
        "",
        "| measure (ms) | n | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    lines += [line for name, summary in rows if (line := _row(name, summary))]
    return "\n".join(lines)


async def run_latency(
    *,
    calls: int,
    command: str,
    out_dir: Path,
    barge_in_after: float | None = 1.0,
    profile: str = "fakes",
    pin: bool = True,
    on_done: Callable[[int], None] | None = None,
    utterances: int | None = None,
    speculative: bool = True,
) -> dict[str, Any]:
    """Place `calls` calls one after another against a fresh server process.

    `utterances` limits each call to the script's first few (the CI smoke run says one)."""
    aggregate = Aggregate()
    work = out_dir / "work"  # logs, speech, job files: not results
    async with run_stack(profile, work, pin=pin, speculative=speculative) as stack:
        files = stack.utterances[:utterances] if utterances else stack.utterances
        job = CallerJob(
            stack.server.base_url, files, calls, concurrency=1, barge_in_after=barge_in_after
        )
        cpu_before = stack.server.usage().cpu_seconds
        provider_before = stack.providers.usage().cpu_seconds if stack.providers else 0.0
        started = time.monotonic()
        run = await run_callers(job, work_dir=work, cpu=stack.cores.helpers, on_done=on_done)
        wall = time.monotonic() - started
        aggregate.server_cpu_seconds = stack.server.usage().cpu_seconds - cpu_before
        if stack.providers:
            aggregate.provider_cpu_seconds = stack.providers.usage().cpu_seconds - provider_before
    aggregate.caller_cpu_seconds = run.cpu_seconds
    for result in run.results:
        aggregate.add(result)
    data = {
        "command": command,
        "profile": profile,
        "bargeInAfterSeconds": barge_in_after,
        "wallSeconds": round(wall, 1),
        "machine": load_conditions(),
        **aggregate.to_json(),
    }
    _write(out_dir, data)
    return data


def _write(out_dir: Path, data: dict[str, Any]) -> None:
    (out_dir / "latency.json").write_text(json.dumps(data, indent=2))
    (out_dir / "latency.md").write_text(render_markdown(data) + "\n")

"""`ava bench latency`: simulated Twilio callers against a server process, one call at a time.

Each call says the script's utterances (real speech, synthesized with the offline voice), the
last one barging into the previous answer; the caller's trace gives what the phone measured and
the server's call record gives where each turn's time went.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.analysis import CallMeasures, measure_call
from benchmarks.server import run_server
from benchmarks.stats import summarize
from media.twilio.caller import CallReport, CallScript, place_call

__all__ = ["DEFAULT_SCRIPT", "LatencyResult", "render_markdown", "run_latency"]

DEFAULT_SCRIPT = (
    "What are your opening hours?",
    "Can I book an appointment please?",
    "Sorry, where exactly are you located?",
)
STAGES = ("voice_to_voice", "endpointing", "stt", "llm_ttft", "tts_ttfb", "server")


@dataclass(slots=True)
class LatencyResult:
    command: str
    profile: str
    calls: int
    failed: int = 0
    greeting: list[float] = field(default_factory=list)
    voice_to_voice: list[float] = field(default_factory=list)
    barge_in_to_clear: list[float] = field(default_factory=list)
    barge_in_to_silence: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    unanswered_turns: int = 0
    server: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    server_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    def add(self, report: CallReport, measures: CallMeasures) -> None:
        if report.error is not None:
            self.failed += 1
        if measures.greeting is not None:
            self.greeting.append(measures.greeting)
        self.voice_to_voice += measures.voice_to_voice
        self.unanswered_turns += measures.unanswered_turns
        for barge_in in measures.barge_ins:
            if barge_in.to_clear is not None:
                self.barge_in_to_clear.append(barge_in.to_clear)
            if barge_in.to_silence is not None:
                self.barge_in_to_silence.append(barge_in.to_silence)
        self.gaps += measures.gaps
        for turn in (report.record or {}).get("turns", []):
            for stage, value in (turn.get("latency") or {}).items():
                self.server.setdefault(stage, []).append(float(value))

    def to_json(self) -> dict[str, Any]:
        def ms(samples: Sequence[float]) -> dict[str, float | int] | None:
            summary = summarize(samples)
            return summary.as_ms() if summary else None

        return {
            "command": self.command,
            "profile": self.profile,
            "machine": {"cpus": _cpus(), "python": platform.python_version()},
            "calls": self.calls,
            "failedCalls": self.failed,
            "unansweredTurns": self.unanswered_turns,
            "greetingMs": ms(self.greeting),
            "voiceToVoiceMs": ms(self.voice_to_voice),
            "bargeInToClearMs": ms(self.barge_in_to_clear),
            "bargeInToSilenceMs": ms(self.barge_in_to_silence),
            "outboundGapsOver60ms": len(self.gaps),
            "serverBreakdownMs": {stage: ms(v) for stage, v in self.server.items()},
            "serverCpuSecondsPerCallMinute": round(
                self.server_cpu_seconds / max(self.wall_seconds / 60, 1e-9), 3
            ),
            "samples": {
                "voiceToVoice": self.voice_to_voice,
                "greeting": self.greeting,
                "bargeInToClear": self.barge_in_to_clear,
            },
        }


def _cpus() -> int:
    return os.cpu_count() or 0


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
    for name, summary in rows:
        if summary:
            lines.append(
                f"| {name} | {summary['count']} | {summary['p50']} | {summary['p95']} "
                f"| {summary['p99']} | {summary['max']} |"
            )
    return "\n".join(lines)


async def run_latency(
    utterances: Sequence[bytes],
    *,
    calls: int,
    command: str,
    barge_in_after: float | None = 1.0,
    profile: str = "offline",
    out_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Place `calls` calls one after another against a fresh server process."""
    result = LatencyResult(command=command, profile=profile, calls=calls)
    log = None
    if out_dir is not None:
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        log = out_dir / "server.log"
    async with run_server(env, log=log) as server:
        cpu_before = server.usage().cpu_seconds
        started = time.monotonic()
        for _ in range(calls):
            script = CallScript(list(utterances), barge_in_after=barge_in_after)
            report = await place_call(server.base_url, script)
            result.add(report, measure_call(report.trace))
        result.wall_seconds = time.monotonic() - started
        result.server_cpu_seconds = server.usage().cpu_seconds - cpu_before
    data = result.to_json()
    if out_dir is not None:
        await asyncio.to_thread(_write, out_dir, data)
    return data


def _write(out_dir: Path, data: dict[str, Any]) -> None:
    (out_dir / "latency.json").write_text(json.dumps(data, indent=2))
    (out_dir / "latency.md").write_text(render_markdown(data) + "\n")

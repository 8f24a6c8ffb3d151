"""`ava bench compare --peer pipecat`: the same callers and the same provider fakes against AVA and
against a pipecat bot, in one run, and the ratios AVA / peer.

One fakes process serves both sides. Each side gets a fresh server process (pinned like the
others) and two phases: `calls` calls one at a time (latency, as `ava bench latency` measures
it), then `load` calls at once (CPU per call-minute and RSS per call under concurrency).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.callers import CallerJob, run_callers
from benchmarks.latency import Aggregate, load_conditions
from benchmarks.providers import run_providers
from benchmarks.stack import DEFAULT_SCRIPT, cores, run_stack, utterance_files

__all__ = ["PEERS", "ratios", "render_compare", "run_compare"]

PEERS = {"pipecat": "benchmarks.peers.pipecat_bot"}
SERVERS = {"ava": "control.cli", **PEERS}


async def _side(
    name: str,
    work_dir: Path,
    *,
    calls: int,
    load: int,
    barge_in_after: float | None,
    pin: bool,
    providers: Any,
    on_done: Callable[[str, int], None] | None,
) -> dict[str, Any]:
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    latency, loaded = Aggregate(), Aggregate()
    async with run_stack(
        "fakes", work_dir, pin=pin, module=SERVERS[name], providers=providers
    ) as stack:
        await asyncio.sleep(1.0)
        baseline = stack.server.usage().rss_bytes
        job = CallerJob(
            stack.server.base_url,
            stack.utterances,
            calls,
            concurrency=1,
            barge_in_after=barge_in_after,
            fetch_record=name == "ava",  # the server's own breakdown exists only in AVA
        )
        phases = [(latency, job), (loaded, replace(job, calls=load, concurrency=load))]
        for aggregate, phase_job in phases:
            # Memory per call is measured in the load phase against the server as the latency
            # phase left it: warm (imports done, inference arenas sized), as in service.
            peak = baseline = stack.server.usage().rss_bytes
            cpu_before = stack.server.usage().cpu_seconds

            def progress(
                n: int, phase: str = "latency" if aggregate is latency else "load"
            ) -> None:
                if on_done is not None:
                    on_done(f"{name} {phase}", n)

            task = asyncio.create_task(
                run_callers(phase_job, work_dir=work_dir, cpu=stack.cores.helpers, on_done=progress)
            )
            while not task.done():
                peak = max(peak, stack.server.usage().rss_bytes)
                await asyncio.wait([task], timeout=0.25)
            run = task.result()
            aggregate.server_cpu_seconds = stack.server.usage().cpu_seconds - cpu_before
            aggregate.caller_cpu_seconds = run.cpu_seconds
            aggregate.rss_per_call_bytes = max(0, peak - baseline) / phase_job.calls
            for result in run.results:
                aggregate.add(result)
    return {
        "warmRssMB": round(baseline / 2**20, 1),
        "latency": latency.to_json(),
        "load": loaded.to_json(),
    }


def _ratio(ava: float | None, peer: float | None) -> float | None:
    if ava is None or not peer:
        return None
    return round(ava / peer, 3)


def ratios(ava: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """AVA / peer for the headline numbers (below 1: AVA is lower, i.e. better)."""

    def p50(side: dict[str, Any], key: str) -> float | None:
        summary = side["latency"][key]
        return float(summary["p50"]) if summary else None

    return {
        "voiceToVoiceP50": _ratio(p50(ava, "voiceToVoiceMs"), p50(peer, "voiceToVoiceMs")),
        "greetingP50": _ratio(p50(ava, "greetingMs"), p50(peer, "greetingMs")),
        "bargeInToClearP50": _ratio(p50(ava, "bargeInToClearMs"), p50(peer, "bargeInToClearMs")),
        "cpuPerCallMinute": _ratio(
            ava["load"]["serverCpuSecondsPerCallMinute"],
            peer["load"]["serverCpuSecondsPerCallMinute"],
        ),
        "rssPerCall": _ratio(ava["load"]["serverRssPerCallMB"], peer["load"]["serverRssPerCallMB"]),
    }


async def run_compare(
    *,
    peer: str,
    command: str,
    out_dir: Path,
    calls: int = 5,
    load: int = 10,
    barge_in_after: float | None = 1.0,
    pin: bool = True,
    on_done: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {sorted(PEERS)}")
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    started = time.monotonic()
    sides: dict[str, Any] = {}
    work = out_dir / "work"  # logs, speech, job files: not results
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    files = await asyncio.to_thread(utterance_files, work)
    placement = cores(pin).helpers
    async with run_providers(
        DEFAULT_SCRIPT, work_dir=work, cpu=placement, utterance_files=files
    ) as urls:
        for name in ("ava", peer):
            sides[name] = await _side(
                name,
                work / name,
                calls=calls,
                load=load,
                barge_in_after=barge_in_after,
                pin=pin,
                providers=urls,
                on_done=on_done,
            )
    data = {
        "command": command,
        "peer": peer,
        "machine": load_conditions(),
        "wallSeconds": round(time.monotonic() - started, 1),
        "sides": sides,
        "ratios": ratios(sides["ava"], sides[peer]),
    }
    (out_dir / "compare.json").write_text(json.dumps(data, indent=2))
    (out_dir / "compare.md").write_text(render_compare(data) + "\n")
    return data


def render_compare(data: dict[str, Any]) -> str:
    peer = data["peer"]
    ava, other = data["sides"]["ava"], data["sides"][peer]

    def cell(side: dict[str, Any], key: str, stat: str = "p50") -> str:
        summary = side["latency"][key]
        return "-" if not summary else str(summary[stat])

    def load(side: dict[str, Any], key: str) -> str:
        return str(side["load"][key])

    def total(side: dict[str, Any], key: str) -> int:
        return int(side["latency"][key]) + int(side["load"][key])

    def troubles(side: dict[str, Any]) -> str:
        return f"{total(side, 'failedCalls')} / {total(side, 'unansweredTurns')}"

    rows = [
        (f"{label} (ms)", cell(ava, key, stat), cell(other, key, stat))
        for label, key, stat in (
            ("voice-to-voice p50", "voiceToVoiceMs", "p50"),
            ("voice-to-voice p95", "voiceToVoiceMs", "p95"),
            ("greeting p50", "greetingMs", "p50"),
            ("barge-in → clear p50", "bargeInToClearMs", "p50"),
            ("barge-in → silent p50", "bargeInToSilenceMs", "p50"),
        )
    ]
    rows += [
        (
            f"server CPU s per call-minute ({ava['load']['calls']} calls at once)",
            load(ava, "serverCpuSecondsPerCallMinute"),
            load(other, "serverCpuSecondsPerCallMinute"),
        ),
        (
            "server RSS MB per call",
            load(ava, "serverRssPerCallMB"),
            load(other, "serverRssPerCallMB"),
        ),
        ("failed calls / unanswered turns", troubles(ava), troubles(other)),
        (
            "outbound gaps > 60 ms",
            str(total(ava, "outboundGapsOver60ms")),
            str(total(other, "outboundGapsOver60ms")),
        ),
    ]
    lines = [
        f"`{data['command']}` — same callers, same fakes, one run",
        "",
        f"| measure | AVA | {peer} |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        "",
        "Ratios AVA / " + peer + ": " + ", ".join(f"{k} {v}" for k, v in data["ratios"].items()),
    ]
    return "\n".join(lines)

"""`ava bench capacity`: N concurrent calls against one server process, N growing until a budget
breaks.

Each step places N calls at once (their starts spread over a few seconds, as real traffic is),
from a caller process of its own, while the server's CPU time and RSS are read from /proc. The
server is pinned to one core (see `benchmarks.stack`), so the largest N within budget is calls per
core. A step breaks a budget when any call fails or leaves a turn unanswered, the phone hears an
outbound gap > 60 ms, the server-added latency p99 exceeds 50 ms, CPU exceeds 0.6 s per
call-minute, or RSS grows by more than 5 MB per call over the idle server's. The sweep stops
at the first step that breaks a *service* budget (failures, gaps, latency); CPU and RSS per call
are reported for every step, since they fall as fixed costs spread over more calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.callers import CallerJob, run_callers
from benchmarks.latency import Aggregate, load_conditions
from benchmarks.server import ServerProcess
from benchmarks.stack import run_stack

__all__ = [
    "BUDGETS",
    "DEFAULT_STEPS",
    "budget_breaks",
    "render_capacity",
    "run_capacity",
    "service_breaks",
    "stagger_for",
]

DEFAULT_STEPS = (1, 10, 50, 100, 200)
BUDGETS = {
    "serverP99Ms": 50.0,
    "cpuSecondsPerCallMinute": 0.6,
    "rssPerCallMB": 5.0,
}


# Each capacity call says the script this many times (~50 s a call), so that with starts
# spread over up to 15 s nearly all N calls are up at once for most of the step.
REPEAT = 3


def stagger_for(calls: int) -> float:
    """Spread the starts 0.2 s apart, at most 15 s in all. Real calls arrive at random: N calls
    started in the same second would take every turn in the same second too, a burst no real
    traffic makes (and the measure of a synchronised herd, not of N calls)."""
    return min(15.0, 0.2 * (calls - 1))


def service_breaks(breaks: list[str]) -> list[str]:
    """The breaks the caller would notice (not CPU or memory cost)."""
    return [b for b in breaks if not b.startswith(("CPU", "RSS"))]


def budget_breaks(step: dict[str, Any]) -> list[str]:
    """Which budgets a capacity step broke (empty: within budget)."""
    broken: list[str] = []
    if step["failedCalls"]:
        broken.append(f"{step['failedCalls']} calls failed")
    if step["unansweredTurns"]:
        broken.append(f"{step['unansweredTurns']} turns unanswered")
    if step["bargeInsWithoutClear"]:
        broken.append(f"{step['bargeInsWithoutClear']} barge-ins never cleared")
    if step["outboundGapsOver60ms"]:
        broken.append(f"{step['outboundGapsOver60ms']} outbound gaps > 60 ms")
    server = (step["serverBreakdownMs"] or {}).get("server")
    if server and server["p99"] > BUDGETS["serverP99Ms"]:
        broken.append(f"server-added p99 {server['p99']} ms > {BUDGETS['serverP99Ms']}")
    cpu = step["serverCpuSecondsPerCallMinute"]
    if cpu > BUDGETS["cpuSecondsPerCallMinute"]:
        broken.append(f"CPU {cpu} s per call-minute > {BUDGETS['cpuSecondsPerCallMinute']}")
    rss = step["serverRssPerCallMB"]
    if rss is not None and rss > BUDGETS["rssPerCallMB"]:
        broken.append(f"RSS {rss} MB per call > {BUDGETS['rssPerCallMB']}")
    return broken


@dataclass(slots=True)
class _RssWatch:
    """Samples the server's RSS while a step runs; the peak is what N calls cost."""

    server: ServerProcess
    peak: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak = max(self.peak, self.server.usage().rss_bytes)
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass


async def _step(
    calls: int,
    stack_server: ServerProcess,
    utterances: list[str],
    *,
    work_dir: Path,
    helpers_cpu: int | None,
    baseline_rss: int,
    provider_usage: Callable[[], float] | None,
    barge_in_after: float | None,
    on_done: Callable[[int], None] | None,
) -> dict[str, Any]:
    job = CallerJob(
        stack_server.base_url,
        utterances,
        calls,
        concurrency=calls,
        barge_in_after=barge_in_after,
        stagger_seconds=stagger_for(calls),
        repeat=REPEAT,
        max_seconds=120.0,
    )
    aggregate = Aggregate()
    watch = _RssWatch(stack_server)
    stop = asyncio.Event()
    cpu_before = stack_server.usage().cpu_seconds
    provider_before = provider_usage() if provider_usage else 0.0
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch.run(stop))
        try:
            run = await run_callers(job, work_dir=work_dir, cpu=helpers_cpu, on_done=on_done)
        finally:
            stop.set()
    wall = time.monotonic() - started
    aggregate.server_cpu_seconds = stack_server.usage().cpu_seconds - cpu_before
    if provider_usage:
        aggregate.provider_cpu_seconds = provider_usage() - provider_before
    aggregate.caller_cpu_seconds = run.cpu_seconds
    aggregate.rss_per_call_bytes = max(0, watch.peak - baseline_rss) / calls
    for result in run.results:
        aggregate.add(result)
    step = {"n": calls, "wallSeconds": round(wall, 1), **aggregate.to_json()}
    # The callers and fakes share one core: near 1.0 the load generator, not the server, may be
    # what delays frames, and the step's gaps and latencies say more about it than about AVA.
    helpers = aggregate.caller_cpu_seconds + aggregate.provider_cpu_seconds
    step["loadGeneratorCores"] = round(helpers / max(wall, 1e-9), 2)
    step["meanConcurrentCalls"] = round(aggregate.call_seconds / max(wall, 1e-9), 1)
    step["budgetBreaks"] = budget_breaks(step)
    return step


async def run_capacity(
    *,
    command: str,
    out_dir: Path,
    steps: Sequence[int] = DEFAULT_STEPS,
    profile: str = "fakes",
    barge_in_after: float | None = 1.0,
    pin: bool = True,
    time_cap: float | None = None,
    on_step: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Run the steps in order on one server; stop at the first that breaks a budget (or when
    `time_cap` seconds have gone by). `on_step(n)` returns the step's per-call progress hook."""
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    work = out_dir / "work"  # logs, speech, job files: not results
    async with run_stack(profile, work, pin=pin) as stack:
        await asyncio.sleep(1.0)  # let startup work (greeting synthesis, model warm-up) settle
        cold = stack.server.usage().rss_bytes
        # One call first, not reported: lazy imports and the inference arenas grow once per
        # process, and would otherwise be billed to the first step's calls.
        await run_callers(
            CallerJob(stack.server.base_url, stack.utterances, 1, barge_in_after=barge_in_after),
            work_dir=work,
            cpu=stack.cores.helpers,
        )
        baseline = stack.server.usage().rss_bytes
        providers = stack.providers
        provider_usage = (lambda: providers.usage().cpu_seconds) if providers is not None else None
        for n in steps:
            step = await _step(
                n,
                stack.server,
                stack.utterances,
                work_dir=work,
                helpers_cpu=stack.cores.helpers,
                baseline_rss=baseline,
                provider_usage=provider_usage,
                barge_in_after=barge_in_after,
                on_done=on_step(n) if on_step else None,
            )
            results.append(step)
            if service_breaks(step["budgetBreaks"]):
                break
            if time_cap is not None and time.monotonic() - began > time_cap:
                break
        pinned = stack.cores.server is not None
    within = [s["n"] for s in results if not s["budgetBreaks"]]
    serviceable = [s["n"] for s in results if not service_breaks(s["budgetBreaks"])]
    data = {
        "command": command,
        "profile": profile,
        "machine": load_conditions(),
        "serverPinnedToOneCore": pinned,
        "coldRssMB": round(cold / 2**20, 1),
        "baselineRssMB": round(baseline / 2**20, 1),
        "budgets": BUDGETS,
        "largestNWithinBudget": max(within) if within else 0,
        "largestNWithinServiceBudgets": max(serviceable) if serviceable else 0,
        "steps": results,
    }
    (out_dir / "capacity.json").write_text(json.dumps(data, indent=2))
    (out_dir / "capacity.md").write_text(render_capacity(data) + "\n")
    return data


def render_capacity(data: dict[str, Any]) -> str:
    lines = [
        f"`{data['command']}` — profile `{data['profile']}`, server pinned to one core: "
        f"{data['serverPinnedToOneCore']}, RSS {data['coldRssMB']} MB at start, "
        f"{data['baselineRssMB']} MB after a warm-up call (the baseline), "
        f"largest N within every budget: **{data['largestNWithinBudget']}**; within the "
        "service budgets (no failure, no gap, latency): "
        f"**{data['largestNWithinServiceBudgets']}**",
        "",
        "| N | mean calls up | failed | gaps>60ms | v2v p50 / p95 (ms) | server-added p99 (ms) "
        "| server CPU s per call-min | RSS MB per call | callers + fakes (cores) "
        "| budgets broken |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in data["steps"]:
        v2v = s["voiceToVoiceMs"] or {}
        server = (s["serverBreakdownMs"] or {}).get("server") or {}
        lines.append(
            f"| {s['n']} | {s['meanConcurrentCalls']} | {s['failedCalls']} "
            f"| {s['outboundGapsOver60ms']} "
            f"| {v2v.get('p50', '-')} / {v2v.get('p95', '-')} | {server.get('p99', '-')} "
            f"| {s['serverCpuSecondsPerCallMinute']} | {s['serverRssPerCallMB']} "
            f"| {s['loadGeneratorCores']} "
            f"| {'; '.join(s['budgetBreaks']) or 'none'} |"
        )
    return "\n".join(lines)

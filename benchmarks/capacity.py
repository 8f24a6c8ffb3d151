"""`ava bench capacity`: N concurrent calls against one server process, N growing until a budget
breaks.

Each step places N calls at once (their starts spread over a few seconds, as real traffic is),
from a caller process of its own, while the CPU time and RSS of the server's whole process tree
(the server and any process it started, `tree_usage`) are read from /proc. The callers and the
provider fakes are the benchmark's own children, not the server's, so they are not in that tree;
each step checks that the fakes' process is not. The server is pinned to one core (see
`benchmarks.stack`), so the largest N within budget is calls per core. A step breaks a budget
when any call fails or leaves a turn unanswered, the phone hears an outbound gap > 60 ms, the
server-added latency p99 exceeds 50 ms, the tree's CPU exceeds 0.6 s per call-minute, or RSS
grows by more than 5 MB per call over the idle server's. The sweep stops at the first step that
breaks a *service* budget (failures, gaps, latency); CPU and RSS per call are reported for every
step, since they fall as fixed costs spread over more calls.

`--nodes N` (N > 1) runs N server processes as one service behind the nginx AVA ships
(`benchmarks.balancer`: one database, Redis, one secret key) and the callers dial the balancer;
CPU and RSS are those of all the nodes' trees, and calls per core divides the largest N within
the service budgets by the cores the nodes were pinned to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.balancer import cluster_env, run_nodes
from benchmarks.callers import CallerJob, run_callers
from benchmarks.latency import Aggregate, load_conditions
from benchmarks.server import ProcessUsage, ServerProcess
from benchmarks.stack import DEFAULT_SCRIPT, run_stack

__all__ = [
    "BUDGETS",
    "DEFAULT_REDIS_URL",
    "DEFAULT_STEPS",
    "budget_breaks",
    "render_capacity",
    "run_capacity",
    "service_breaks",
    "stagger_for",
    "sweep_ends",
    "tree_pids",
    "tree_usage",
]

DEFAULT_STEPS = (1, 10, 50, 100, 200)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # --nodes: the nodes' shared Redis
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


def sweep_ends(
    step: dict[str, Any], *, keep_going: bool, elapsed: float, cap: float | None
) -> bool:
    """Whether the sweep stops after `step`: at a service break (unless told to keep going, to
    measure cost at every N asked for), or once `cap` seconds have gone by."""
    if service_breaks(step["budgetBreaks"]) and not keep_going:
        return True
    return cap is not None and elapsed > cap


def budget_breaks(step: dict[str, Any]) -> list[str]:
    """Which budgets a capacity step broke (empty: within budget)."""
    broken: list[str] = []
    if step["failedCalls"]:
        broken.append(f"{step['failedCalls']} calls failed")
    if step.get("refusedCalls"):  # the server is past what it holds, and says so
        broken.append(f"{step['refusedCalls']} calls refused (503: not taking calls)")
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


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the field after the command name (which may hold spaces and
    parentheses); None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def tree_pids(root: int) -> list[int]:
    """`root` and every live process descended from it (Linux /proc; one scan)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # ppid
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def tree_usage(root: int) -> ProcessUsage:
    """CPU seconds (user + system, every thread) and RSS of `root`'s whole process tree.

    Each live process counts its own time plus that of its children that have exited and been
    waited for (cutime/cstime), so a worker process that came and went during a step is still
    billed, once, and live descendants are not counted twice."""
    cpu_ticks = 0
    rss_pages = 0
    for pid in tree_pids(root):
        fields = _stat(pid)
        if fields is None:
            continue  # exited since the scan; its waiter's cutime has it on the next read
        cpu_ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        try:
            rss_pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ProcessUsage(cpu_ticks / _TICKS, rss_pages * _PAGE)


@dataclass(slots=True)
class _RssWatch:
    """Samples the server trees' RSS while a step runs; the peak is what N calls cost."""

    servers: list[ServerProcess]
    peak: int = 0
    processes: int = 1  # the most processes the server trees had at once

    async def run(self, stop: asyncio.Event) -> None:
        pids = [server.process.pid for server in self.servers]
        while not stop.is_set():
            self.peak = max(self.peak, _usage(pids).rss_bytes)
            self.processes = max(self.processes, sum(len(tree_pids(pid)) for pid in pids))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass


def _usage(pids: list[int]) -> ProcessUsage:
    """`tree_usage` summed over the nodes' trees."""
    usages = [tree_usage(pid) for pid in pids]
    return ProcessUsage(sum(u.cpu_seconds for u in usages), sum(u.rss_bytes for u in usages))


async def _step(
    calls: int,
    servers: list[ServerProcess],
    base_url: str,
    utterances: list[str],
    *,
    work_dir: Path,
    helpers_cpu: int | None,
    baseline_rss: int,
    provider_usage: Callable[[], float] | None,
    provider_pid: int | None,
    barge_in_after: float | None,
    on_done: Callable[[int], None] | None,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    job = CallerJob(
        base_url,
        utterances,
        calls,
        concurrency=calls,
        barge_in_after=barge_in_after,
        stagger_seconds=stagger_for(calls),
        repeat=REPEAT,
        max_seconds=120.0,
        texts=texts,
    )
    aggregate = Aggregate()
    watch = _RssWatch(servers)
    stop = asyncio.Event()
    server_pids = [server.process.pid for server in servers]
    if provider_pid is not None and any(provider_pid in tree_pids(p) for p in server_pids):
        raise RuntimeError("the provider fakes run inside the server's process tree")
    cpu_before = _usage(server_pids).cpu_seconds
    provider_before = provider_usage() if provider_usage else 0.0
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch.run(stop))
        try:
            run = await run_callers(job, work_dir=work_dir, cpu=helpers_cpu, on_done=on_done)
        finally:
            stop.set()
    wall = time.monotonic() - started
    aggregate.server_cpu_seconds = _usage(server_pids).cpu_seconds - cpu_before
    if provider_usage:
        aggregate.provider_cpu_seconds = provider_usage() - provider_before
    aggregate.caller_cpu_seconds = run.cpu_seconds
    aggregate.rss_per_call_bytes = max(0, watch.peak - baseline_rss) / calls
    for result in run.results:
        aggregate.add(result)
    step = {"n": calls, "wallSeconds": round(wall, 1), **aggregate.to_json()}
    # Turns the STT fake gave other words than the caller said: its script drifted from the
    # audio, and those turns' timings measure the wrong conversation.
    step["misheardTurns"] = sum(r.misheard_turns for r in run.results)
    step["misheardExamples"] = [m for r in run.results for m in r.misheard][:5]
    # The callers and fakes share one core: near 1.0 the load generator, not the server, may be
    # what delays frames, and the step's gaps and latencies say more about it than about AVA.
    helpers = aggregate.caller_cpu_seconds + aggregate.provider_cpu_seconds
    step["loadGeneratorCores"] = round(helpers / max(wall, 1e-9), 2)
    # Near 1.0 on a pinned server the core is saturated: calls then get less work done (frames
    # late, turn-model questions superseded), so the step's CPU per call-minute understates.
    step["serverCores"] = round(aggregate.server_cpu_seconds / max(wall, 1e-9), 2)
    step["meanConcurrentCalls"] = round(aggregate.call_seconds / max(wall, 1e-9), 1)
    step["serverProcesses"] = watch.processes
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
    keep_going: bool = False,
    on_step: Callable[[int], Callable[[int], None]] | None = None,
    nodes: int = 1,
    redis_url: str = DEFAULT_REDIS_URL,
) -> dict[str, Any]:
    """Run the steps in order on one server; stop at the first that breaks a service budget
    (unless `keep_going`: CPU per call-minute is then measured at every N asked for) or when
    `time_cap` seconds have gone by. `on_step(n)` returns the step's per-call progress hook.
    `nodes` > 1: that many server processes behind nginx, sharing Redis at `redis_url`."""
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    work = out_dir / "work"  # logs, speech, job files: not results
    run_id = f"bench-{uuid.uuid4().hex[:6]}"
    async with contextlib.AsyncExitStack() as exits:
        shared: dict[str, str] = {}
        if nodes > 1:
            shared = await exits.enter_async_context(cluster_env(redis_url))
        first = shared | ({"AVA_NODE_ID": f"{run_id}-1"} if nodes > 1 else {})
        stack = await exits.enter_async_context(run_stack(profile, work, pin=pin, server_env=first))
        servers, base_url, node_cores, balancer = [stack.server], stack.server.base_url, None, None
        if nodes > 1:
            cluster = await exits.enter_async_context(run_nodes(stack, nodes, work, shared, run_id))
            servers, base_url, balancer = cluster.servers, cluster.base_url, cluster.balancer
            node_cores = cluster.cores
        await asyncio.sleep(1.0)  # let startup work (greeting synthesis, model warm-up) settle
        server_pids = [server.process.pid for server in servers]
        cold = _usage(server_pids).rss_bytes
        # One call per node first, not reported: lazy imports and the inference arenas grow once
        # per process, and would otherwise be billed to the first step's calls.
        for server in servers:
            await run_callers(
                CallerJob(server.base_url, stack.utterances, 1, barge_in_after=barge_in_after),
                work_dir=work,
                cpu=stack.cores.helpers,
            )
        baseline = _usage(server_pids).rss_bytes
        providers = stack.providers
        provider_usage = (lambda: providers.usage().cpu_seconds) if providers is not None else None
        for n in steps:
            step = await _step(
                n,
                servers,
                base_url,
                stack.utterances,
                work_dir=work,
                helpers_cpu=stack.cores.helpers,
                baseline_rss=baseline,
                provider_usage=provider_usage,
                provider_pid=providers.pid if providers is not None else None,
                barge_in_after=barge_in_after,
                on_done=on_step(n) if on_step else None,
                # the fakes' STT script is the caller's: their transcripts must match it
                texts=list(DEFAULT_SCRIPT) if profile == "fakes" else None,
            )
            results.append(step)
            if sweep_ends(
                step, keep_going=keep_going, elapsed=time.monotonic() - began, cap=time_cap
            ):
                break
        pinned = stack.cores.server is not None
        spread = balancer.media_streams_per_node() if balancer is not None else None
    within = [s["n"] for s in results if not s["budgetBreaks"]]
    serviceable = [s["n"] for s in results if not service_breaks(s["budgetBreaks"])]
    largest = max(serviceable) if serviceable else 0
    # The cores the servers ran on: one per node, or the one they shared (None: not pinned).
    used = len({c for c in node_cores or [stack.cores.server] if c is not None}) or None
    data = {
        "command": command,
        "profile": profile,
        "machine": load_conditions(),
        "nodes": nodes,
        "nodeCores": used,
        "callsPerCore": round(largest / used, 1) if used else None,
        "firstBreak": next(
            (
                {"n": s["n"], "breaks": service_breaks(s["budgetBreaks"])}
                for s in results
                if service_breaks(s["budgetBreaks"])
            ),
            None,
        ),  # fmt: skip
        "mediaStreamsPerNode": spread,
        "serverPinnedToOneCore": pinned,
        "coldRssMB": round(cold / 2**20, 1),
        "baselineRssMB": round(baseline / 2**20, 1),
        "budgets": BUDGETS,
        "largestNWithinBudget": max(within) if within else 0,
        "largestNWithinServiceBudgets": largest,
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
        "| N | mean calls up | failed | refused | gaps>60ms | v2v p50 / p95 (ms) "
        "| server-added p99 (ms) | held back (backoff) max (ms) | misheard turns "
        "| server tree CPU s per call-min | server cores | RSS MB per call "
        "| callers + fakes (cores) | budgets broken |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if data.get("nodes", 1) > 1:
        broke = data.get("firstBreak")
        lines[1:1] = [
            "",
            f"{data['nodes']} nodes behind nginx on {data['nodeCores']} server core(s): "
            f"**{data['callsPerCore']} calls per core**; "
            + (f"breaks at N={broke['n']} ({'; '.join(broke['breaks'])})" if broke
               else "no step broke a service budget")
            + f"; media streams per node: {data['mediaStreamsPerNode']}",
        ]  # fmt: skip
    for s in data["steps"]:
        v2v = s["voiceToVoiceMs"] or {}
        server = (s["serverBreakdownMs"] or {}).get("server") or {}
        held = (s["serverBreakdownMs"] or {}).get("held") or {}
        lines.append(
            f"| {s['n']} | {s['meanConcurrentCalls']} | {s['failedCalls']} "
            f"| {s.get('refusedCalls', '-')} | {s['outboundGapsOver60ms']} "
            f"| {v2v.get('p50', '-')} / {v2v.get('p95', '-')} | {server.get('p99', '-')} "
            f"| {held.get('max', '-')} | {s.get('misheardTurns', '-')} "
            f"| {s['serverCpuSecondsPerCallMinute']} | {s.get('serverCores', '-')} "
            f"| {s['serverRssPerCallMB']} "
            f"| {s['loadGeneratorCores']} "
            f"| {'; '.join(s['budgetBreaks']) or 'none'} |"
        )
    for s in data["steps"]:
        if s.get("misheardTurns"):
            said, heard = s["misheardExamples"][0]
            lines.append(
                f"\nN={s['n']}: the STT fake gave {s['misheardTurns']} caller turns other words "
                f"than were said (e.g. {said!r} heard as {heard!r}): those turns' timings are "
                "of another conversation."
            )
    return "\n".join(lines)

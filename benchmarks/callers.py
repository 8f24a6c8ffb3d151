"""A pool of simulated Twilio callers, run in its own process so its CPU is not the server's.

`python -m benchmarks.callers JOB.json OUT.json`: places `calls` calls against `base_url`, at most
`concurrency` at a time, their starts spread over `stagger_seconds` (real calls do not all arrive
in the same millisecond); each call says the job's utterances (raw μ-law files). Every call is
measured here (`measure_call`), so only numbers cross the process boundary, not audio. The output
also carries this process's own CPU seconds, so a report can show the callers were not the
bottleneck. Progress is one line per finished call on stdout (`done <n>`), for the parent's
progress display.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.analysis import measure_call
from media.twilio.caller import CallScript, place_call

__all__ = [
    "CallResult",
    "CallerJob",
    "CallerRun",
    "caller_main",
    "misheard_turns",
    "run_caller_process",
    "run_callers",
    "run_job",
]


@dataclass(frozen=True, slots=True)
class CallerJob:
    base_url: str
    utterance_files: list[str]
    calls: int
    concurrency: int = 1
    barge_in_after: float | None = 1.0
    stagger_seconds: float = 0.0
    fetch_record: bool = True  # AVA's /dev/calls record (the server's own breakdown)
    max_seconds: float = 60.0
    repeat: int = 1  # say the utterances this many times over (longer calls; barge-in once)
    # What each utterance says (the STT fake's script): each call's transcript is checked
    # against it, so a run whose STT fake drifted from the audio says so (None: not checked).
    texts: list[str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallerJob:
        return cls(**data)


@dataclass(slots=True)
class CallResult:
    error: str | None
    seconds: float  # the call's length, webhook to hang-up
    greeting: float | None
    voice_to_voice: list[float]
    barge_in_to_clear: list[float]
    barge_in_to_silence: list[float]
    barge_ins_without_clear: int
    gaps: list[float]
    unanswered_turns: int
    server: dict[str, list[float]] = field(default_factory=dict)  # stage → seconds per turn
    # Caller turns in the server's transcript that are not what was said (`CallerJob.texts`),
    # with up to `_MISHEARD_KEPT` of them as [said, transcribed] for the report.
    misheard_turns: int = 0
    misheard: list[list[str]] = field(default_factory=list)
    # The service refused the call (503 once the redirects ran out: draining, full, or shedding
    # load); counted apart from failures, as the calls it took are not harmed.
    refused: bool = False


_MISHEARD_KEPT = 3


def misheard_turns(said: list[str], transcribed: list[str]) -> list[list[str]]:
    """[said, transcribed] for each caller turn that differs, in order; a missing or extra
    turn (two utterances merged into one, or one split in two) is "" on its other side."""
    return [
        [want, got]
        for want, got in itertools.zip_longest(said, transcribed, fillvalue="")
        if " ".join(want.split()) != " ".join(got.split())
    ]


async def _one_call(job: CallerJob, utterances: list[bytes], http: httpx.AsyncClient) -> CallResult:
    started = time.monotonic()
    script = CallScript(
        list(utterances) * job.repeat,
        barge_in_after=job.barge_in_after,
        max_seconds=job.max_seconds,
        await_greeting=True,
    )
    report = await place_call(job.base_url, script, fetch_record=job.fetch_record, http=http)
    if report.refused is not None:
        return CallResult(
            None, time.monotonic() - started, None, [], [], [], 0, [], 0, refused=True
        )
    measures = measure_call(report.trace)
    error = report.error
    if error is None and len(report.turns) < len(script.utterances):
        # The server ended the stream early (e.g. closed it as malformed): the call failed,
        # although the caller saw nothing but a closed socket.
        error = f"call ended after {len(report.turns)} of {len(script.utterances)} utterances"
    misheard: list[list[str]] = []
    if job.texts is not None and report.record and error is None:  # a failed call says so
        said = [m.get("message", "") for m in report.record.get("messages", [])]
        roles = [m.get("role") for m in report.record.get("messages", [])]
        transcribed = [text for text, role in zip(said, roles, strict=True) if role == "user"]
        misheard = misheard_turns(list(job.texts) * job.repeat, transcribed)
    server: dict[str, list[float]] = {}
    for turn in (report.record or {}).get("turns", []):
        for stage, value in (turn.get("latency") or {}).items():
            server.setdefault(stage, []).append(float(value))
    return CallResult(
        error=error,
        seconds=time.monotonic() - started,
        greeting=measures.greeting,
        voice_to_voice=measures.voice_to_voice,
        barge_in_to_clear=[b.to_clear for b in measures.barge_ins if b.to_clear is not None],
        barge_in_to_silence=[b.to_silence for b in measures.barge_ins if b.to_silence is not None],
        barge_ins_without_clear=sum(b.to_clear is None for b in measures.barge_ins),
        gaps=measures.gaps,
        unanswered_turns=measures.unanswered_turns,
        server=server,
        misheard_turns=len(misheard),
        misheard=misheard[:_MISHEARD_KEPT],
    )


async def run_job(job: CallerJob, on_done: Callable[[int], None] | None = None) -> list[CallResult]:
    """Place the job's calls; `on_done(n)` is called as each one finishes."""
    utterances = [await asyncio.to_thread(Path(p).read_bytes) for p in job.utterance_files]
    limit = asyncio.Semaphore(max(1, job.concurrency))
    results: list[CallResult] = []
    step = job.stagger_seconds / job.calls if job.calls > 1 else 0.0
    begin = time.monotonic()

    async def call(index: int) -> None:
        # Absolute start times: a slow start does not push the later ones back.
        await asyncio.sleep(max(0.0, begin + index * step - time.monotonic()))
        async with limit:
            try:
                result = await _one_call(job, utterances, http)
            except (OSError, ValueError, TimeoutError, httpx.HTTPError) as exc:  # bad TwiML…
                result = CallResult(f"call failed: {exc!r}", 0.0, None, [], [], [], 0, [], 0)
        results.append(result)
        if on_done is not None:
            on_done(len(results))

    limits = httpx.Limits(max_connections=max(10, job.concurrency))
    async with httpx.AsyncClient(timeout=30, limits=limits) as http, asyncio.TaskGroup() as tg:
        for index in range(job.calls):
            tg.create_task(call(index))
    return results


@dataclass(frozen=True, slots=True)
class CallerRun:
    results: list[CallResult]
    cpu_seconds: float  # the caller process's own user + system time


async def run_callers(
    job: CallerJob,
    *,
    work_dir: Path,
    cpu: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> CallerRun:
    """Run `job` in a caller process (pinned to `cpu` if given) and collect its results."""
    data = await run_caller_process("benchmarks.callers", asdict(job), work_dir, cpu, on_done)
    results = [CallResult(**call) for call in data["calls"]]
    return CallerRun(results, float(data["cpuSeconds"]))


async def run_caller_process(
    module: str,
    job: dict[str, Any],
    work_dir: Path,
    cpu: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """`python -m <module> JOB.json OUT.json` (a `caller_main` program) pinned to `cpu`; its
    output. Its `done <n>` lines drive `on_done`; its stderr goes to callers.log."""
    name = module.rsplit(".", 1)[-1]
    job_file, out_file = work_dir / f"{name}-job.json", work_dir / f"{name}-out.json"
    await asyncio.to_thread(job_file.write_text, json.dumps(job))
    command = [sys.executable, "-m", module, str(job_file), str(out_file)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    with (work_dir / "callers.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=log
        )
        assert process.stdout is not None
        try:
            async for line in process.stdout:
                if line.startswith(b"done ") and on_done is not None:
                    on_done(int(line.split()[1]))
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"caller process failed ({process.returncode}); see callers.log")
    data: dict[str, Any] = json.loads(await asyncio.to_thread(out_file.read_text))
    return data


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def caller_main(
    argv: list[str],
    work: Callable[[dict[str, Any], Callable[[int], None]], Coroutine[Any, Any, list[Any]]],
) -> int:
    """A caller process's `main`: JOB.json in, `{"calls": […], "cpuSeconds": …}` out, a
    `done <n>` line per finished call on stdout, on uvloop when it is installed."""
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())

    def done(count: int) -> None:
        print(f"done {count}", flush=True)  # noqa: T201 - the parent reads this

    try:
        import uvloop  # the callers must be cheap; uvloop halves the loop's own cost

        calls = uvloop.run(work(job, done))
    except ImportError:
        calls = asyncio.run(work(job, done))
    out_path.write_text(json.dumps({"calls": calls, "cpuSeconds": _cpu_seconds()}))
    return 0


async def _run(job: dict[str, Any], done: Callable[[int], None]) -> list[dict[str, Any]]:
    return [asdict(r) for r in await run_job(CallerJob.from_json(job), done)]


def main(argv: list[str]) -> int:
    return caller_main(argv, _run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

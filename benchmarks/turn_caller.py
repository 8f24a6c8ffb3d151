"""The turn-taking benchmark's callers: one call per trial, placed one after another.

`python -m benchmarks.turn_caller JOB.json OUT.json` (started by `run_caller_process`). Each call
is a real simulated Twilio call (`place_call`: webhook, TwiML, media websocket, `PhoneLine` playing
the server's audio in real time with marks and `clear`), driven by the trial's steps instead of a
fixed script: wait for the greeting; for each step wait until the assistant has been quiet for
`QUIET_BEFORE` seconds, say the step's clips (with the pause between them), then either wait for
the answer (pause steps) or say the event `event_after` seconds into the answer's audio and
listen on. Every frame goes out on an absolute 20 ms clock. Only timings cross back to the
parent: when each clip's voice started and ended, voiced audio received, clears, and the voiced
audio the phone actually played (`clear`s applied), all in seconds since the call began, plus
the call's wall-clock origin so the fake LLM's request log can be laid on the same timeline.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from benchmarks.analysis import played_frames
from benchmarks.callers import caller_main
from media.g711 import ulaw_silence
from media.twilio.caller import CallReport, CallScript, media_stream, place_call, voiced
from media.twilio.phone import PhoneLine

__all__ = ["CallTimeline", "StepTimes", "TurnJob", "run_turn_calls"]

FRAME = 160
FRAME_SECONDS = 0.02
QUIET_BEFORE = 0.6  # the caller speaks after this much assistant silence
AUDIBLE_WINDOW = 0.3  # voiced audio received this recently: the assistant is talking
ANSWER_TIMEOUT = 8.0  # no answer within this: the step goes on without one
LISTEN_AFTER_EVENT = 3.0  # keep listening this long after an event before the next step
QUIET_TIMEOUT = 25.0  # an assistant that never goes quiet is talked over after this


@dataclass(frozen=True, slots=True)
class TurnJob:
    base_url: str
    trials: list[list[dict[str, Any]]]  # per call: its steps (`turn_script.Step` as dicts)
    max_seconds: float = 400.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TurnJob:
        return cls(**data)


@dataclass(slots=True)
class StepTimes:
    kind: str
    label: str
    tags: dict[str, str]
    said: list[tuple[float, float]] = field(default_factory=list)  # voice start/end per clip
    event: tuple[float, float] | None = None  # the event's voice start/end
    answer: float | None = None  # first voiced assistant audio after the clips were said


@dataclass(slots=True)
class CallTimeline:
    trial: int
    wall_origin: float  # time.time() at the call's second 0
    error: str | None = None
    start_sent: float = 0.0
    ended: float = 0.0
    steps: list[StepTimes] = field(default_factory=list)
    voiced_received: list[float] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    played: list[tuple[float, float]] = field(default_factory=list)  # voiced runs heard


@functools.lru_cache(maxsize=4096)
def _voiced(frame: bytes) -> bool:
    return voiced(frame)


def _frames(audio: bytes) -> list[bytes]:
    frames = [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]
    if frames and len(frames[-1]) < FRAME:
        frames[-1] += ulaw_silence(FRAME - len(frames[-1]))
    return frames


def voiced_runs(played: list[tuple[float, bytes]]) -> list[tuple[float, float]]:
    """Back-to-back voiced frames the phone played, merged into (start, end) runs."""
    runs: list[tuple[float, float]] = []
    for begin, end, is_voiced in played_frames(played):
        if not is_voiced:
            continue
        if runs and begin - runs[-1][1] <= 1e-6:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((begin, end))
    return runs


class _Driver:
    """One call's media stream: what the phone hears, and a caller speaking on a 20 ms clock."""

    def __init__(
        self, ws: websockets.ClientConnection, line: PhoneLine, timeline: CallTimeline
    ) -> None:
        self.ws = ws
        self.line = line
        self.timeline = timeline
        self.t0 = time.monotonic()
        timeline.wall_origin = time.time() - (time.monotonic() - self.t0)
        self.frame_index = 0
        self.silence = ulaw_silence(FRAME)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_server_text(self, text: str) -> None:
        now = self.now()
        before = self.line.clears_received
        audio = self.line.receive_text(text, now)
        if self.line.clears_received > before:
            self.timeline.clears.append(now)
        if audio and voiced(audio):
            self.timeline.voiced_received.append(now)

    def talking(self, now: float) -> bool:
        received = self.timeline.voiced_received
        recent = bool(received) and now - received[-1] < AUDIBLE_WINDOW
        return recent or self.line.queued_seconds(now) > 0.0

    def answer_after(self, moment: float) -> float | None:
        received = self.timeline.voiced_received
        index = bisect.bisect_right(received, moment)
        return received[index] if index < len(received) else None

    async def send(self, frame: bytes) -> None:
        now = self.now()
        await self.ws.send(self.line.media(frame, now))
        for message in self.line.due_messages(now):
            await self.ws.send(message)
        self.frame_index += 1
        # Absolute schedule: a late wake-up is caught up, never accumulated.
        await asyncio.sleep(max(0.0, self.frame_index * FRAME_SECONDS - self.now()))

    async def say(self, audio: bytes) -> tuple[float, float]:
        """Send `audio`; (first voiced frame sent, end of the last voiced frame)."""
        first = last = None
        for frame in _frames(audio):
            now = self.now()
            if _voiced(frame):
                first = now if first is None else first
                last = now + FRAME_SECONDS
            await self.send(frame)
        now = self.now()
        return (now if first is None else first, now if last is None else last)

    async def hold(self, seconds: float) -> None:
        end = self.now() + seconds
        while self.now() < end:
            await self.send(self.silence)

    async def hold_until(self, done: Callable[[float], bool], limit: float) -> bool:
        """Send silence until `done(now)`; False if `limit` seconds passed first."""
        end = self.now() + limit
        while not done(self.now()):
            if self.now() >= end:
                return False
            await self.send(self.silence)
        return True

    async def quiet(self, seconds: float = QUIET_BEFORE) -> None:
        """Hold until the assistant has been quiet for `seconds` (or QUIET_TIMEOUT passed)."""
        quiet_since = [self.now()]

        def settled(now: float) -> bool:
            if self.talking(now):
                quiet_since[0] = now
            return now - quiet_since[0] >= seconds

        await self.hold_until(settled, QUIET_TIMEOUT)

    async def step(self, spec: dict[str, Any], audio: dict[str, bytes]) -> StepTimes:
        times = StepTimes(spec["kind"], spec["label"], dict(spec.get("tags") or {}))
        await self.quiet()
        for i, clip in enumerate(spec["clips"]):
            if i:
                await self.hold(float(spec["pause"]))
            times.said.append(await self.say(audio[clip["path"]]))
        said_end = times.said[-1][1]
        answered = await self.hold_until(
            lambda _: self.answer_after(said_end) is not None, ANSWER_TIMEOUT
        )
        times.answer = self.answer_after(times.said[0][0]) if answered else None
        event = spec.get("event")
        if event is None or times.answer is None:
            return times
        answer_at = self.answer_after(said_end)
        assert answer_at is not None
        await self.hold_until(lambda now: now >= answer_at + spec["event_after"], ANSWER_TIMEOUT)
        times.event = await self.say(audio[event["path"]])
        await self.hold(LISTEN_AFTER_EVENT)
        return times


async def _trial(
    job: TurnJob, index: int, audio: dict[str, bytes], http: httpx.AsyncClient
) -> CallTimeline:
    timeline = CallTimeline(index, time.time())

    async def converse(
        ws: websockets.ClientConnection, line: PhoneLine, script: CallScript, report: CallReport
    ) -> None:
        driver = _Driver(ws, line, timeline)
        async with media_stream(ws, line, driver.on_server_text, driver.now) as start_sent:
            timeline.start_sent = start_sent
            try:
                async with asyncio.timeout(job.max_seconds):
                    # the greeting first: heard, then finished
                    await driver.hold_until(lambda _: bool(timeline.voiced_received), 10.0)
                    for spec in job.trials[index]:
                        timeline.steps.append(await driver.step(spec, audio))
                    await driver.quiet()
                await ws.send(line.stop(driver.now()))
                await asyncio.sleep(0.1)
                await ws.close()
            except TimeoutError:
                timeline.error = f"trial call ran over {job.max_seconds} s"
            except websockets.ConnectionClosed:
                timeline.error = "the server closed the call"
            finally:
                timeline.ended = driver.now()
                segments = line.played_segments(driver.now())
                timeline.played = voiced_runs([(s.start, s.audio) for s in segments])

    report = await place_call(
        job.base_url, CallScript([]), fetch_record=False, http=http, converse=converse
    )
    if report.error and timeline.error is None:
        timeline.error = report.error
    return timeline


async def run_turn_calls(job: TurnJob, on_done: Callable[[int], None]) -> list[CallTimeline]:
    """Place the job's trial calls one at a time (their LLM requests must not interleave)."""
    paths = {
        clip["path"]
        for steps in job.trials
        for step in steps
        for clip in [*step["clips"], *([step["event"]] if step.get("event") else [])]
    }
    audio = {p: await asyncio.to_thread(Path(p).read_bytes) for p in paths}
    timelines: list[CallTimeline] = []
    async with httpx.AsyncClient(timeout=30) as http:
        for index in range(len(job.trials)):
            try:
                timeline = await _trial(job, index, audio, http)
            except (OSError, ValueError) as exc:  # webhook refused, bad TwiML…
                timeline = CallTimeline(index, time.time(), error=f"call failed: {exc!r}")
            timelines.append(timeline)
            on_done(len(timelines))
    return timelines


async def _run(job: dict[str, Any], done: Callable[[int], None]) -> list[dict[str, Any]]:
    return [asdict(t) for t in await run_turn_calls(TurnJob.from_json(job), done)]


if __name__ == "__main__":
    sys.exit(caller_main(sys.argv[1:], _run))

"""Turn-taking measures from a trial call's timeline (pure: no sockets, no clocks).

Times are seconds on the call's own timeline (see `turn_caller.CallTimeline`); `llm` are the
moments the fake LLM was asked, on the same timeline. Per step:
- **pause** (unfinished phrase, pause, rest of the sentence): *premature* when the first voiced
  assistant audio reaches the phone before the caller's last voiced frame; *talk-over* when
  voiced assistant audio plays while the caller's voice is being sent (either half);
  *LLM asked early* when a chat request arrived before the caller finished (speculation is
  allowed, so this is reported but has no budget); voice-to-voice after the finished sentence.
- **backchannel / noise** said while the assistant talks: *false barge-in* when a `clear`
  arrives within `CLEAR_WINDOW` of the onset, or the reply is abandoned: the phone plays less
  than `MIN_HEARD` s of voiced audio in the two seconds from 0.5 s after the onset (every answer
  has several seconds left there; the event comes 1.5 s into a 6.5 s+ answer).
- **interruption** said while the assistant talks: *no longer heard* = onset → end of the
  assistant audio the phone played from the onset on (runs less than `JOIN` apart are one
  stretch; the answer to the interruption starts well after); *missed* when that is over
  `MISSED_AFTER`.
- **voice-to-voice** on the finished questions the events cut into: the caller's last voiced
  frame sent → the first voiced assistant audio received.
An event step whose answer never came, or whose assistant was not audible at the onset, is not
measured (and counted as such): it cannot show a barge-in either way.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.stats import summarize

__all__ = [
    "BUDGETS",
    "CLEAR_WINDOW",
    "StepMeasure",
    "SideSummary",
    "check_budgets",
    "llm_times",
    "measure_step",
    "measure_timeline",
    "summarize_side",
]

CLEAR_WINDOW = 2.0
MIN_HEARD = 1.0
HEARD_WINDOW = (0.5, 2.5)  # after the onset
JOIN = 0.25  # played runs closer than this are one stretch of assistant speech
MISSED_AFTER = 1.5
AUDIBLE_BEFORE = 0.3  # the assistant counts as talking at the onset if heard this recently


@dataclass(frozen=True, slots=True)
class StepMeasure:
    kind: str
    label: str
    pause: float | None = None
    measured: bool = True
    reason: str | None = None  # why not measured, or what made it a failure
    answered: bool = True
    premature: bool | None = None
    talk_over: bool | None = None
    llm_early: bool | None = None
    voice_to_voice: float | None = None  # pause steps: after the finished sentence
    question_v2v: float | None = None  # event steps: the finished question
    false_barge_in: bool | None = None
    to_clear: float | None = None
    to_silent: float | None = None
    missed: bool | None = None
    llm_after_event: bool | None = None


def _overlap(runs: Sequence[Sequence[float]], start: float, end: float) -> float:
    return sum(max(0.0, min(e, end) - max(s, start)) for s, e in runs)


def _first_at_or_after(times: Sequence[float], moment: float) -> float | None:
    index = bisect.bisect_left(times, moment)
    return times[index] if index < len(times) else None


def _heard_until(runs: Sequence[Sequence[float]], onset: float) -> float | None:
    """End of the stretch of assistant audio playing at `onset` (None: nothing was)."""
    current = [r for r in runs if r[0] <= onset and r[1] >= onset - AUDIBLE_BEFORE]
    if not current:
        return None
    end = max(r[1] for r in current)
    for start, stop in runs:
        if start > onset and start - end < JOIN:
            end = max(end, stop)
    return end


def measure_step(
    step: dict[str, Any],
    *,
    received: Sequence[float],
    clears: Sequence[float],
    played: Sequence[Sequence[float]],
    llm: Sequence[float],
) -> StepMeasure:
    kind, label = step["kind"], step["label"]
    said = [tuple(s) for s in step["said"]]
    start, end = said[0][0], said[-1][1]
    answer = _first_at_or_after(received, start)
    if kind == "pause":
        premature = answer is not None and answer < end
        return StepMeasure(
            kind,
            label,
            pause=float(step["tags"].get("pause", 0)),
            answered=answer is not None,
            premature=premature,
            talk_over=any(_overlap(played, s, e) > 0 for s, e in said),
            llm_early=any(start <= t < end for t in llm),
            voice_to_voice=None if answer is None or premature else answer - end,
            reason="reply before the caller finished" if premature else None,
        )
    question_v2v = None if answer is None or answer < end else answer - end
    event = step.get("event")
    if event is None:
        return StepMeasure(kind, label, measured=False, answered=False, reason="no answer")
    onset, event_end = event
    heard_end = _heard_until(played, onset)
    if heard_end is None:
        return StepMeasure(
            kind,
            label,
            measured=False,
            question_v2v=question_v2v,
            reason="assistant not audible at the onset",
        )
    clear = _first_at_or_after(clears, onset)
    to_clear = None if clear is None or clear > onset + CLEAR_WINDOW else clear - onset
    to_silent = max(0.0, heard_end - onset)
    llm_after = any(onset <= t <= event_end + CLEAR_WINDOW for t in llm)
    common = {
        "question_v2v": question_v2v,
        "to_clear": to_clear,
        "to_silent": to_silent,
        "llm_after_event": llm_after,
    }
    if kind == "interruption":
        missed = to_silent > MISSED_AFTER
        reason = f"still heard {to_silent:.2f} s after the onset" if missed else None
        return StepMeasure(kind, label, missed=missed, reason=reason, **common)
    heard = _overlap(played, onset + HEARD_WINDOW[0], onset + HEARD_WINDOW[1])
    reason = None
    if to_clear is not None:
        reason = f"clear {to_clear * 1000:.0f} ms after the onset"
    elif heard < MIN_HEARD:
        reason = f"reply abandoned: {heard:.2f} s heard in the 2 s after"
    return StepMeasure(kind, label, false_barge_in=reason is not None, reason=reason, **common)


def llm_times(requests: Sequence[dict[str, Any]], wall_origin: float, ended: float) -> list[float]:
    """The fake LLM's request times that fall inside one call, on the call's timeline."""
    times = [float(r["t"]) - wall_origin for r in requests]
    return sorted(t for t in times if 0.0 <= t <= ended)


def measure_timeline(timeline: dict[str, Any], llm: Sequence[float]) -> list[StepMeasure]:
    received = sorted(timeline["voiced_received"])
    return [
        measure_step(
            step,
            received=received,
            clears=sorted(timeline["clears"]),
            played=timeline["played"],
            llm=llm,
        )
        for step in timeline["steps"]
    ]


def _rate(flags: Sequence[bool | None]) -> dict[str, Any]:
    values = [f for f in flags if f is not None]
    count = sum(values)
    return {
        "count": count,
        "n": len(values),
        "rate": round(count / len(values), 3) if values else None,
    }


def _ms(samples: Sequence[float | None]) -> dict[str, float | int] | None:
    summary = summarize([s for s in samples if s is not None])
    return summary.as_ms() if summary else None


@dataclass(slots=True)
class SideSummary:
    """Every step of one side (AVA or a peer), by scenario."""

    calls: int = 0
    failed_calls: int = 0
    steps: list[StepMeasure] = field(default_factory=list)

    def of(self, kind: str, pause: float | None = None) -> list[StepMeasure]:
        return [s for s in self.steps if s.kind == kind and (pause is None or s.pause == pause)]

    def to_json(self) -> dict[str, Any]:
        pauses: dict[str, Any] = {}
        for pause in sorted({s.pause for s in self.of("pause") if s.pause is not None}):
            steps = self.of("pause", pause)
            pauses[f"{pause:.1f}"] = {
                "premature": _rate([s.premature for s in steps]),
                "talkOver": _rate([s.talk_over for s in steps]),
                "llmAskedBeforeCallerFinished": _rate([s.llm_early for s in steps]),
                "unanswered": sum(not s.answered for s in steps),
                "voiceToVoiceAfterPauseMs": _ms([s.voice_to_voice for s in steps]),
            }
        events: dict[str, Any] = {}
        for kind in ("backchannel", "noise", "interruption"):
            steps = self.of(kind)
            measured = [s for s in steps if s.measured]
            entry: dict[str, Any] = {
                "steps": len(steps),
                "notMeasured": len(steps) - len(measured),
                "clear": _rate([s.to_clear is not None for s in measured]),
                "toClearMs": _ms([s.to_clear for s in measured]),
                "llmAskedAfterEvent": _rate([s.llm_after_event for s in measured]),
            }
            if kind == "interruption":
                entry["missed"] = _rate([s.missed for s in measured])
                entry["toNoLongerHeardMs"] = _ms([s.to_silent for s in measured])
            else:
                entry["falseBargeIn"] = _rate([s.false_barge_in for s in measured])
            events[kind] = entry
        pause_steps = self.of("pause")
        return {
            "calls": self.calls,
            "failedCalls": self.failed_calls,
            "pauses": pauses,
            "pausesAll": {
                "premature": _rate([s.premature for s in pause_steps]),
                "talkOver": _rate([s.talk_over for s in pause_steps]),
            },
            **events,
            "voiceToVoiceMs": _ms([s.question_v2v for s in self.steps]),
            "failures": [asdict(s) for s in self.steps if s.reason],
        }


def summarize_side(
    timelines: Sequence[dict[str, Any]], requests: Sequence[dict[str, Any]]
) -> SideSummary:
    side = SideSummary()
    for timeline in timelines:
        side.calls += 1
        if timeline.get("error"):
            side.failed_calls += 1
        llm = llm_times(requests, timeline["wall_origin"], timeline["ended"])
        side.steps += measure_timeline(timeline, llm)
    return side


# (key, what, target, value from a side's JSON (and the peer's), passes)
BUDGETS = (
    ("pauseTalkOver", "talk-over on pauses ≤ 0.7 s", "0 %"),
    ("pausePremature", "premature replies on pauses ≤ 0.7 s", "0 %"),
    ("backchannelFalseBargeIn", "false barge-in on backchannels", "≤ 5 %"),
    ("noiseFalseBargeIn", "false barge-in on noise", "0 %"),
    ("missedInterruptions", "missed interruptions", "0 %"),
    ("interruptionToNotHeardP50", "interruption → assistant no longer heard p50", "≤ 300 ms"),
    ("voiceToVoiceVsPeer", "voice-to-voice p50 on finished sentences", "≤ 0.65 × pipecat"),
)


def check_budgets(side: dict[str, Any], peer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's budgets against one side's summary; `passed` None when there is no data."""

    def rate(entry: dict[str, Any]) -> float | None:
        return None if entry["n"] == 0 else entry["count"] / entry["n"]

    def p50(summary: dict[str, Any] | None) -> float | None:
        return None if not summary else float(summary["p50"])

    values: dict[str, tuple[float | None, float]] = {
        "pauseTalkOver": (rate(side["pausesAll"]["talkOver"]), 0.0),
        "pausePremature": (rate(side["pausesAll"]["premature"]), 0.0),
        "backchannelFalseBargeIn": (rate(side["backchannel"]["falseBargeIn"]), 0.05),
        "noiseFalseBargeIn": (rate(side["noise"]["falseBargeIn"]), 0.0),
        "missedInterruptions": (rate(side["interruption"]["missed"]), 0.0),
        "interruptionToNotHeardP50": (p50(side["interruption"]["toNoLongerHeardMs"]), 300.0),
    }
    ours, theirs = p50(side["voiceToVoiceMs"]), p50(peer["voiceToVoiceMs"]) if peer else None
    ratio = None if ours is None or not theirs else round(ours / theirs, 3)
    values["voiceToVoiceVsPeer"] = (ratio, 0.65)
    results = []
    for key, what, target in BUDGETS:
        value, limit = values[key]
        results.append(
            {
                "budget": key,
                "what": what,
                "target": target,
                "value": value,
                "passed": None if value is None else value <= limit,
            }
        )
    return results

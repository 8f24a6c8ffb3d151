"""`ava bench turns [--peer pipecat]`: does the assistant take turns like a person?

Trials of mid-sentence pauses, backchannels, noise bursts and real interruptions
(`turn_script`), said by simulated Twilio callers (`turn_caller`, one call per trial, in a
process of their own) to a server on the cloud profile: the Deepgram fake (interims every
250 ms of speech, words revealed as spoken, endpointing finals), the OpenAI fake (support-desk
replies, first token 300 ms, 50 tokens/s) and the ElevenLabs fake (first byte 150 ms), in their
own process, as `ava bench latency` runs them. With `--peer pipecat` the same trials, the same
audio and the same fakes then run against pipecat 1.14. What the phone heard and when the fake
LLM was asked give the measures (`turn_analysis`); the issue's budgets are checked on AVA.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.callers import run_caller_process
from benchmarks.compare import PEERS, SERVERS
from benchmarks.latency import load_conditions
from benchmarks.providers import SttScript, read_llm_log, run_providers
from benchmarks.stack import cores, run_stack
from benchmarks.turn_analysis import check_budgets, summarize_side
from benchmarks.turn_caller import TurnJob
from benchmarks.turn_script import UTTERANCE_GAP, Step, stt_script, trial_steps

__all__ = ["render_turns", "run_turns"]


def _plan(work: Path, trials: int) -> tuple[list[list[Step]], SttScript]:
    plan = [trial_steps(work, t) for t in range(trials)]
    lines, times, seconds = stt_script(plan[0])
    # The STT fake walks one script per call: every trial must say the same words.
    assert all(stt_script(steps)[0] == lines for steps in plan[1:])
    return plan, SttScript(lines, seconds, times, UTTERANCE_GAP)


async def run_turns(
    *,
    trials: int,
    command: str,
    out_dir: Path,
    peer: str | None = None,
    pin: bool = True,
    on_done: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    if peer is not None and peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {sorted(PEERS)}")
    started = time.monotonic()
    work = out_dir / "work"  # logs, speech, job files: not results
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    plan, script = await asyncio.to_thread(_plan, work, trials)
    llm_log = work / "llm-requests.jsonl"
    await asyncio.to_thread(llm_log.unlink, missing_ok=True)
    timelines: dict[str, list[dict[str, Any]]] = {}
    names = ["ava"] + ([peer] if peer else [])
    async with run_providers(
        script, work_dir=work, cpu=cores(pin).helpers, llm_log=llm_log
    ) as urls:
        for name in names:
            side_dir = work / name
            await asyncio.to_thread(side_dir.mkdir, parents=True, exist_ok=True)
            async with run_stack(
                "fakes", side_dir, pin=pin, module=SERVERS[name], providers=urls
            ) as stack:
                job = TurnJob(stack.server.base_url, [[asdict(s) for s in p] for p in plan])

                def progress(n: int, side: str = name) -> None:
                    if on_done is not None:
                        on_done(side, n)

                data = await run_caller_process(
                    "benchmarks.turn_caller", asdict(job), side_dir, stack.cores.helpers, progress
                )
            timelines[name] = data["calls"]
    requests = await asyncio.to_thread(read_llm_log, llm_log)
    sides = {name: summarize_side(timelines[name], requests).to_json() for name in names}
    result = {
        "command": command,
        "trials": trials,
        "peer": peer,
        "machine": load_conditions(),
        "wallSeconds": round(time.monotonic() - started, 1),
        "sides": sides,
        "budgets": check_budgets(sides["ava"], sides[peer] if peer else None),
    }
    (out_dir / "turns.json").write_text(json.dumps(result, indent=2))
    (out_dir / "turns.md").write_text(render_turns(result) + "\n")
    (work / "timelines.json").write_text(json.dumps(timelines))
    return result


def _rate(entry: dict[str, Any]) -> str:
    if not entry["n"]:
        return "-"
    return f"{entry['count']}/{entry['n']} ({100 * entry['count'] / entry['n']:.0f} %)"


def _p(summary: dict[str, Any] | None, stat: str = "p50") -> str:
    return "-" if not summary else f"{summary[stat]:.0f}"


def render_turns(data: dict[str, Any]) -> str:
    names = list(data["sides"])
    sides = [data["sides"][n] for n in names]
    rows: list[tuple[str, list[str]]] = []
    pause_keys = sorted({k for side in sides for k in side["pauses"]})
    for key in pause_keys:
        for label, field in (
            ("premature replies", "premature"),
            ("talk-over", "talkOver"),
            ("LLM asked before the caller finished", "llmAskedBeforeCallerFinished"),
        ):
            cells = [_rate(s["pauses"][key][field]) if key in s["pauses"] else "-" for s in sides]
            rows.append((f"pause {key} s: {label}", cells))
        cells = [
            _p(s["pauses"][key]["voiceToVoiceAfterPauseMs"]) if key in s["pauses"] else "-"
            for s in sides
        ]
        rows.append((f"pause {key} s: voice-to-voice after the sentence p50 (ms)", cells))
    for kind in ("backchannel", "noise"):
        rows.append((f"{kind}: false barge-in", [_rate(s[kind]["falseBargeIn"]) for s in sides]))
        rows.append((f"{kind}: `clear` sent", [_rate(s[kind]["clear"]) for s in sides]))
        rows.append(
            (f"{kind}: LLM asked after it", [_rate(s[kind]["llmAskedAfterEvent"]) for s in sides])
        )
    rows += [
        ("interruption: missed", [_rate(s["interruption"]["missed"]) for s in sides]),
        (
            "interruption → no longer heard p50 / p95 (ms)",
            [
                f"{_p(s['interruption']['toNoLongerHeardMs'])} / "
                f"{_p(s['interruption']['toNoLongerHeardMs'], 'p95')}"
                for s in sides
            ],
        ),
        ("interruption → `clear` p50 (ms)", [_p(s["interruption"]["toClearMs"]) for s in sides]),
        (
            "voice-to-voice, finished sentences p50 / p95 (ms)",
            [f"{_p(s['voiceToVoiceMs'])} / {_p(s['voiceToVoiceMs'], 'p95')}" for s in sides],
        ),
        (
            "failed calls / event steps not measured",
            [
                f"{s['failedCalls']} / "
                f"{sum(s[k]['notMeasured'] for k in ('backchannel', 'noise', 'interruption'))}"
                for s in sides
            ],
        ),
    ]
    header = " | ".join(["AVA" if n == "ava" else n for n in names])
    lines = [
        f"`{data['command']}` — {data['trials']} trials, one call each, cloud profile fakes",
        "",
        f"| measure | {header} |",
        "|---" * (len(names) + 1) + "|",
        *[f"| {label} | {' | '.join(cells)} |" for label, cells in rows],
        "",
        "| budget (AVA) | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for budget in data["budgets"]:
        value = budget["value"]
        if value is None:
            shown, verdict = "no data", "—"
        else:
            is_rate = budget["target"].endswith("%")
            shown = f"{100 * value:.0f} %" if is_rate else str(value)
            verdict = "pass" if budget["passed"] else "**FAIL**"
        lines.append(f"| {budget['what']} | {budget['target']} | {shown} | {verdict} |")
    return "\n".join(lines)

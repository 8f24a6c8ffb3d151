"""What the turn-taking benchmark's callers say, as real audio, and what the STT fake hears of it.

One trial is one call: 13 steps, in this order, each started once the assistant is quiet:
- 4 **mid-sentence pauses**: an unfinished phrase, 0.5 or 0.7 s of silence (alternating over the
  phrases and the trials), then the rest of the sentence;
- 4 **backchannels** ("okay", "uh-huh", "yeah", "right"), 2 **noise bursts** and 3 **real
  interruptions** ("stop", "wait, no", "hold on a second"), each said `EVENT_AFTER` seconds into
  the assistant's answer to a finished question (those questions give voice-to-voice).

Speech is synthesized with the offline Piper voice once per work directory (cached by text) and
cut to its voiced frames, so a pause is exactly the silence put between two clips. The STT fake
gets one script line per utterance it will hear (`stt_script`), with the voiced second at which
each word has been heard, so its interims and finals reveal the words as they are spoken: the
final for "I'd like to move my appointment to" arrives during the pause, as Deepgram's would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from benchmarks.fakes.deepgram import DeepgramFakeConfig
from media.g711 import pcm16_to_ulaw, ulaw_to_float
from media.twilio.caller import voiced

__all__ = [
    "BACKCHANNELS",
    "EVENT_AFTER",
    "INTERRUPTIONS",
    "PAUSES",
    "PAUSE_PHRASES",
    "QUESTIONS",
    "UTTERANCE_GAP",
    "Clip",
    "Step",
    "StepKind",
    "noise_burst",
    "stt_script",
    "trial_steps",
    "trim_to_voice",
]

StepKind = Literal["pause", "backchannel", "interruption", "noise"]

PAUSE_PHRASES = (
    ("I'd like to move my appointment to", "next Tuesday afternoon."),
    ("My account number is four five", "seven two nine one."),
    ("I was calling about the", "bill I got last week."),
    ("Can you check if my order and", "my refund went through?"),
)
PAUSES = (0.5, 0.7)
BACKCHANNELS = ("Okay.", "Uh-huh.", "Yeah.", "Right.")
INTERRUPTIONS = ("Stop.", "Wait, no.", "Hold on a second.")
NOISES = ("noise: rustle 300 ms", "noise: knock 120 ms")
# Finished questions, one per event step; their answers are what the events cut into.
QUESTIONS = (
    "Can you tell me what my current plan includes?",
    "Why was I charged twice on my last bill?",
    "What time does your store close on Saturdays?",
    "Could you check the status of my refund?",
    "How do I reset the password on my account?",
    "Is there a fee for changing my delivery date?",
    "Can you explain the charges on my latest bill?",
    "Where is my package right now?",
    "Do you have any appointments this week?",
)
EVENT_AFTER = 1.5  # seconds into the answer's audio
# Silence that separates the STT fake's utterances: longer than any pause inside a sentence.
UTTERANCE_GAP = 1.2
_FRAME = 160


@dataclass(frozen=True, slots=True)
class Clip:
    """One piece of caller audio: μ-law file and the words said in it ("" for noise)."""

    path: str
    text: str


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    label: str
    clips: list[Clip]  # said in order: a pause step's two halves, or an event step's question
    pause: float = 0.0  # silence between the clips
    event: Clip | None = None  # said EVENT_AFTER s into the answer (event steps)
    event_after: float = EVENT_AFTER
    tags: dict[str, str] = field(default_factory=dict)


def trim_to_voice(ulaw: bytes) -> bytes:
    """The audio from its first to its last voiced 20 ms frame (frame-aligned)."""
    frames = [ulaw[i : i + _FRAME] for i in range(0, len(ulaw) - _FRAME + 1, _FRAME)]
    marks = [i for i, f in enumerate(frames) if voiced(f)]
    if not marks:
        return b""
    return b"".join(frames[marks[0] : marks[-1] + 1])


def noise_burst(seconds: float, *, level: float, seed: int, decay: float) -> bytes:
    """Band-limited noise with a fast attack and exponential decay: a rustle or a knock."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    white = rng.standard_normal(n + 8)
    noise = np.convolve(white, np.ones(8) / 8, mode="valid")[:n]  # soften the top end
    envelope = np.exp(-np.arange(n) / (decay * 8000))
    pcm = np.clip(level * 32767 * envelope * noise / np.std(noise), -32768, 32767)
    return pcm16_to_ulaw(pcm.astype("<i2").tobytes())


def _noise_audio(label: str) -> bytes:
    if "knock" in label:
        return noise_burst(0.12, level=0.5, seed=2, decay=0.03)
    return noise_burst(0.3, level=0.12, seed=1, decay=0.2)


def _synthesize(texts: list[str], cache: Path) -> dict[str, Path]:
    """Piper audio of each text, trimmed to its voice, cached by the text's hash."""
    paths = {t: cache / f"{hashlib.sha1(t.encode()).hexdigest()[:16]}.ulaw" for t in texts}
    missing = [t for t, p in paths.items() if not p.exists()]
    if missing:
        from voice.engines.synthesize import synthesize_ulaw

        cache.mkdir(parents=True, exist_ok=True)
        for text, audio in zip(missing, synthesize_ulaw(missing), strict=True):
            paths[text].write_bytes(trim_to_voice(audio))
    return paths


def trial_steps(work_dir: Path, trial: int) -> list[Step]:
    """The steps of trial `trial` (0-based); audio is made on first use (blocking: Piper)."""
    cache = work_dir / "turn-audio"
    texts = [t for pair in PAUSE_PHRASES for t in pair]
    texts += list(QUESTIONS) + list(BACKCHANNELS) + list(INTERRUPTIONS)
    paths = _synthesize(texts, cache)
    for label in NOISES:
        path = cache / f"{label.split(':')[1].split()[0]}.ulaw"
        if not path.exists():
            path.write_bytes(_noise_audio(label))
        paths[label] = path

    def clip(text: str) -> Clip:
        return Clip(str(paths[text]), "" if text in NOISES else text)

    steps = [
        Step(
            "pause",
            f"{first} … {rest}",
            [clip(first), clip(rest)],
            pause=PAUSES[(trial + k) % len(PAUSES)],
            tags={"pause": f"{PAUSES[(trial + k) % len(PAUSES)]:.1f}"},
        )
        for k, (first, rest) in enumerate(PAUSE_PHRASES)
    ]
    events: list[tuple[StepKind, str]] = [("backchannel", b) for b in BACKCHANNELS]
    events += [("noise", n) for n in NOISES] + [("interruption", i) for i in INTERRUPTIONS]
    steps += [
        Step(kind, text, [clip(question)], event=clip(text))
        for (kind, text), question in zip(events, QUESTIONS, strict=True)
    ]
    return steps


def _stt_voiced_seconds(ulaw: bytes, rms: float = DeepgramFakeConfig.speech_rms) -> float:
    """Seconds of frames the STT fake's energy detector counts as speech."""
    frames = len(ulaw) // _FRAME
    if not frames:
        return 0.0
    samples = ulaw_to_float(ulaw[: frames * _FRAME]).reshape(frames, _FRAME)
    loud = np.sqrt(np.mean(samples * samples, axis=1)) >= rms
    return float(np.count_nonzero(loud)) * 0.02


def _word_times(clips: list[tuple[bytes, str]]) -> tuple[str, list[float], float]:
    """Script line, heard-by times (voiced seconds) and voiced length of clips said as one."""
    words: list[str] = []
    times: list[float] = []
    offset = 0.0
    for audio, text in clips:
        seconds = _stt_voiced_seconds(audio)
        these = text.split()
        # A word is recognised about halfway through it.
        times += [offset + seconds * (i + 0.5) / len(these) for i in range(len(these))]
        words += these
        offset += seconds
    return " ".join(words), times, offset


def stt_script(steps: list[Step]) -> tuple[list[str], list[list[float]], list[float]]:
    """Lines, word times and seconds for the STT fake: one line per utterance it will hear.

    Clips said less than `UTTERANCE_GAP` apart are one utterance (a pause step's halves); a
    noise burst the STT fake's detector hears is an utterance without words, as Deepgram gives
    noise an empty transcript; one it does not hear is no utterance at all."""
    lines: list[str] = []
    times: list[list[float]] = []
    seconds: list[float] = []
    for step in steps:
        groups = [[(Path(c.path).read_bytes(), c.text) for c in step.clips]]
        if step.event is not None:
            groups.append([(Path(step.event.path).read_bytes(), step.event.text)])
        for group in groups:
            line, heard, length = _word_times(group)
            if length <= 0:
                continue  # the STT fake will not hear it
            lines.append(line)
            times.append(heard)
            seconds.append(length)
    return lines, times, seconds

"""Turn-taking and barge-in as a pure state machine.

Fed VAD probabilities, transcripts, turn-model verdicts and the assistant's audibility, each with
the time it happened; returns `Action`s for the session to carry out. No I/O, no clock of its own:
tests drive it with explicit times.

End of turn = VAD silence ≥ `vad_silence_seconds`, then the evidence decides:
  - the words (`voice.utterance`): a transcript ending in a preposition, article, conjunction,
    filler or half a number is not finished, whatever the audio says — the turn waits
    `unfinished_timeout` of silence (a caller who pauses mid-sentence for 0.7 s is not answered);
  - finished words and the STT's final transcript commit at once, without the turn model;
  - otherwise the turn model (smart-turn) is asked, and the turn ends when it calls the utterance
    complete and the final transcript is in, or after `incomplete_timeout` of silence;
a `max_wait` of silence commits whatever text there is (an STT that never answers must not hang
the call). While the decision is pending the session may speculate on the stable text; an STT
that endpoints by itself (Deepgram's `speech_final`) on finished words starts that speculation
before the VAD's silence has opened the decision. Nothing is played before the commit.

Barge-in is a decision, not a reflex. At speech onset while the assistant is audible the session
stops sending new audio (`PauseOutput`; what is queued at the far end plays out, ≤ 0.2 s), then
the words decide: an acknowledgement ("okay", "uh-huh") resumes the reply where it stopped; an
interruption phrase or any other words interrupt (`Interrupt`: clear, cancel, truncate); speech
that goes on `barge_in_deadline` without words interrupts too. Speech that ends without words
asks the STT for them (an STT that transcribes only on request has none yet): none (a cough, a
bump) resumes, at the latest `words_wait` after the speech ended; words that take the turn
("What?") interrupt, even when they come after the resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from voice.phrases import (
    could_become_acknowledgement,
    has_interruption_phrase,
    is_acknowledgement,
    word_count,
)
from voice.types import Transcript
from voice.utterance import Ending, ending

__all__ = [
    "CancelSpeculation",
    "CommitTurn",
    "DiscardTurn",
    "FinalizeStt",
    "Interrupt",
    "PauseOutput",
    "ResumeOutput",
    "RunTurnModel",
    "Speculate",
    "TurnAction",
    "TurnConfig",
    "TurnState",
    "TurnTaker",
]


@dataclass(frozen=True, slots=True)
class TurnConfig:
    vad_threshold: float = 0.5
    # Higher while the assistant talks: the line echoes some of its voice back.
    vad_threshold_while_speaking: float = 0.7
    # Audio per VAD decision: a voiced window's speech began up to this long before `now`,
    # so onsets (and the barge-in's voice_seconds) are dated from the window's start.
    vad_window_seconds: float = 0.0
    min_speech_seconds: float = 0.1
    vad_silence_seconds: float = 0.2
    turn_threshold: float = 0.5
    incomplete_timeout: float = 0.8
    # Silence after words that cannot end a sentence ("…my appointment to") before the turn is
    # taken as over anyway: longer than the pauses people make mid-sentence (≤ ~1 s).
    unfinished_timeout: float = 1.6
    max_wait: float = 3.0
    use_turn_model: bool = True
    speculative: bool = True
    voice_seconds: float = 0.2
    # Speech over the assistant that goes on this long with no words yet interrupts anyway.
    barge_in_deadline: float = 0.7
    # Speech over the assistant that ended without words: how long its words may still come.
    words_wait: float = 0.5
    # After an acknowledgement, its late transcripts are not a turn of their own.
    acknowledgement_window: float = 1.5
    num_words: int = 0
    acknowledgement_phrases: tuple[str, ...] = ()
    interruption_phrases: tuple[str, ...] = ()


class TurnState(Enum):
    LISTENING = "listening"  # nobody is talking
    USER_SPEAKING = "user-speaking"
    PENDING = "pending"  # caller went quiet; deciding whether the turn is over
    RESPONDING = "responding"  # a reply is being produced or played


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinalizeStt:
    """Ask the STT for a final transcript of the speech so far."""


@dataclass(frozen=True, slots=True)
class RunTurnModel:
    """Run the end-of-turn model on the caller's audio; report with `turn_model_result`."""

    speech_end: float


@dataclass(frozen=True, slots=True)
class Speculate:
    text: str


@dataclass(frozen=True, slots=True)
class CancelSpeculation:
    pass


@dataclass(frozen=True, slots=True)
class CommitTurn:
    """The caller's turn is over: reply to `text`."""

    text: str
    speech_end: float  # when the caller stopped (voice-to-voice starts here)
    stt_done: float | None  # when the final transcript arrived


@dataclass(frozen=True, slots=True)
class DiscardTurn:
    """Speech that produced no words (noise, cough): nothing to answer."""


@dataclass(frozen=True, slots=True)
class PauseOutput:
    """Caller onset over the assistant: stop sending new audio, keep the reply."""

    onset: float


@dataclass(frozen=True, slots=True)
class ResumeOutput:
    pass


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Barge-in: cancel the reply, clear queued audio, truncate history to what was heard."""

    onset: float


TurnAction = (
    FinalizeStt
    | RunTurnModel
    | Speculate
    | CancelSpeculation
    | CommitTurn
    | DiscardTurn
    | PauseOutput
    | ResumeOutput
    | Interrupt
)


@dataclass(slots=True)
class _Turn:
    """Everything known about the caller's current turn."""

    final_text: list[str] = field(default_factory=list)
    interim: str = ""
    speech_end: float | None = None
    stt_done_at: float | None = None
    turn_complete: bool | None = None
    speculated: str | None = None
    # When the STT endpointed on its own during the caller's current silence (None: it hasn't).
    stt_endpointed_at: float | None = None
    model_asked: bool = False  # the turn model was asked about the current silence

    def text(self) -> str:
        parts = [*self.final_text, self.interim] if self.interim else self.final_text
        return " ".join(p.strip() for p in parts if p.strip())


@dataclass(slots=True)
class _Barge:
    """Caller speech over the audible assistant, output paused, not yet decided."""

    onset: float
    text: str = ""
    final: bool = False  # `text` is a final transcript (else the latest interim)
    ended_at: float | None = None  # the speech stopped before a decision
    # The STT was asked for the words of speech that ended without any (an STT that only
    # transcribes on request, like the offline Whisper, has none before it is asked) …
    finalize_asked: bool = False
    # … and its final answer is in: nothing more will come for this speech.
    stt_done: bool = False


class TurnTaker:
    def __init__(self, config: TurnConfig) -> None:
        self.config = config
        self.state = TurnState.LISTENING
        self.assistant_audible = False
        self.interruptible = True
        self._turn = _Turn()
        self._voiced_since: float | None = None
        self._unvoiced_since: float | None = None
        # The same runs measured in audio (seconds of frames): frames that arrive in a burst
        # after a stall carry their speech although no clock time passes between them.
        self._voiced_audio = 0.0
        self._unvoiced_audio = 0.0
        self._speech_onset: float | None = None  # onset of the caller's current speech
        self._barge: _Barge | None = None
        # Caller speech that began and ended under a reply that could not be interrupted.
        self._unanswered_speech_end: float | None = None
        # Onset of a run of speech already judged an acknowledgement: ignored until it ends.
        self._acknowledged_onset: float | None = None
        # Until then, transcripts that only acknowledge are the late words of that speech.
        self._acknowledged_until = -math.inf
        self._verdict: tuple[str, Ending] = ("", Ending.UNKNOWN)

    # --- inputs ----------------------------------------------------------------------------

    def vad(self, probability: float, now: float, seconds: float = 0.0) -> list[TurnAction]:
        """One VAD answer at `now` about `seconds` of caller audio (0: measure by the clock)."""
        threshold = (
            self.config.vad_threshold_while_speaking
            if self.assistant_audible
            else self.config.vad_threshold
        )
        if probability >= threshold:
            self._unvoiced_since = None
            if self._voiced_since is None:
                self._voiced_since = now - self.config.vad_window_seconds
                self._voiced_audio = self.config.vad_window_seconds
            else:
                self._voiced_audio = round(self._voiced_audio + seconds, 6)
            return self._on_voiced(now)
        if self._unvoiced_since is None:
            self._unvoiced_since = now
            self._unvoiced_audio = 0.0
        else:
            self._unvoiced_audio = round(self._unvoiced_audio + seconds, 6)
        self._voiced_since = None
        return self._on_unvoiced(now)

    def transcript(self, result: Transcript, now: float) -> list[TurnAction]:
        text = result.text.strip()
        barge = self._barge
        if barge is not None:
            # Words of the speech over the assistant: they decide the barge-in, and join the
            # caller's turn only if it interrupts.
            if text:
                barge.text, barge.final = text, result.is_final
            if result.is_final and (barge.finalize_asked or result.speech_final):
                barge.stt_done = True
            return self._decide_barge_in(now)
        config = self.config
        if text and (self._acknowledged_onset is not None or now < self._acknowledged_until):
            acks = config.acknowledgement_phrases
            if is_acknowledgement(text, acks) or could_become_acknowledgement(text, acks):
                # The acknowledgement's own (late) words: not a turn, even if the reply has
                # finished meanwhile.
                return []
            if self.state is TurnState.RESPONDING and self.assistant_audible and self.interruptible:
                # "okay, but what about…", or late words of speech taken for a cough: more than
                # an acknowledgement after all.
                onset = self._acknowledged_onset if self._acknowledged_onset is not None else now
                quiet = self._voiced_since is None and self._unvoiced_since is not None
                self._barge = _Barge(
                    onset,
                    text,
                    result.is_final,
                    ended_at=self._unvoiced_since if quiet else None,
                    finalize_asked=True,
                    stt_done=result.is_final,
                )
                return self._interrupt(now)
        turn = self._turn
        if result.is_final:
            if text:
                turn.final_text.append(text)
            turn.interim = ""
            if result.speech_final and self.state is TurnState.PENDING:
                turn.stt_done_at = now
            elif (
                result.speech_final
                and self.state is TurnState.USER_SPEAKING
                and self._unvoiced_since is not None
            ):
                # The STT endpointed before the VAD's silence opened the decision: on finished
                # words, start the answer now (it is played only once the turn is committed).
                turn.stt_endpointed_at = now
                words = turn.text()
                if (
                    config.speculative
                    and words
                    and turn.speculated != words
                    and self._sentence_ended(words)
                ):
                    turn.speculated = words
                    return [Speculate(words)]
        else:
            turn.interim = text
        if self.state is TurnState.RESPONDING:
            return []  # words for the next turn; VAD opens it
        if self.state is TurnState.LISTENING and result.is_final and text:
            # STT heard words VAD missed (a quiet caller): a turn that already ended.
            self.state = TurnState.PENDING
            turn.speech_end = now
            if result.speech_final:
                turn.stt_done_at = now
            return [FinalizeStt(), *self._maybe_commit(now)]
        return self._maybe_commit(now)

    def turn_model_result(
        self, probability: float, speech_end: float, now: float
    ) -> list[TurnAction]:
        if self.state is not TurnState.PENDING or self._turn.speech_end != speech_end:
            return []  # stale verdict: the caller spoke again since
        self._turn.turn_complete = probability >= self.config.turn_threshold
        return self._maybe_commit(now)

    def set_assistant_audible(self, audible: bool, now: float) -> list[TurnAction]:
        self.assistant_audible = audible
        barge = self._barge
        if not audible and barge is not None:
            # The reply finished playing under the caller's speech: nothing left to interrupt,
            # and the speech simply opens the caller's next turn.
            self._barge = None
            self._take_words(barge)
            if barge.ended_at is None:
                self._speech_onset = barge.onset
            return [ResumeOutput()]
        return []

    def assistant_started(self, now: float) -> list[TurnAction]:
        """The assistant speaks without a caller turn (the greeting)."""
        if self.state is TurnState.LISTENING:
            self.state = TurnState.RESPONDING
        return []

    def reply_finished(self, now: float) -> list[TurnAction]:
        """The reply has been fully played (or abandoned)."""
        self.assistant_audible = False
        self._barge = None
        if self.state is not TurnState.RESPONDING:
            return []
        missed, self._unanswered_speech_end = self._unanswered_speech_end, None
        if self._speech_onset is not None:
            self.state = TurnState.USER_SPEAKING
            return []
        if missed is not None:
            # The caller spoke under a reply they could not interrupt: answer them now.
            self.state = TurnState.PENDING
            turn = self._turn
            turn.speech_end = missed
            turn.stt_done_at = None
            turn.turn_complete = None
            turn.model_asked = False
            return [FinalizeStt(), *self._maybe_commit(now)]
        self.state = TurnState.LISTENING
        return []

    def tick(self, now: float) -> list[TurnAction]:
        if self._barge is not None:
            return self._decide_barge_in(now)
        if self.state is TurnState.PENDING:
            return self._maybe_commit(now)
        return []

    def next_deadline(self) -> float | None:
        """When `tick` may next have something to do."""
        config = self.config
        barge = self._barge
        if barge is not None:
            if barge.ended_at is not None:
                return barge.ended_at + config.words_wait
            return barge.onset + config.barge_in_deadline
        turn = self._turn
        if self.state is not TurnState.PENDING or turn.speech_end is None:
            return None
        end = turn.speech_end
        verdict = self._ending(turn.text())
        if verdict is Ending.UNFINISHED:
            return end + min(config.unfinished_timeout, config.max_wait)
        if turn.turn_complete or verdict is Ending.FINISHED or turn.stt_done_at is None:
            return end + config.max_wait
        return end + config.incomplete_timeout

    # --- internals -------------------------------------------------------------------------

    def _ending(self, text: str) -> Ending:
        """The words' verdict, computed once per distinct transcript (it is asked per frame)."""
        if text != self._verdict[0]:
            self._verdict = (text, ending(text) if text else Ending.UNKNOWN)
        return self._verdict[1]

    def _sentence_ended(self, text: str) -> bool:
        """Finished words, or words the STT itself punctuated as a sentence that nothing marks
        as unfinished: with its endpoint, that decides the turn."""
        verdict = self._ending(text)
        return verdict is Ending.FINISHED or (
            verdict is Ending.UNKNOWN and text.rstrip().endswith((".", "?", "!"))
        )

    def _on_voiced(self, now: float) -> list[TurnAction]:
        assert self._voiced_since is not None
        run = max(now - self._voiced_since, self._voiced_audio)
        if self.state is TurnState.RESPONDING:
            if not (self.assistant_audible and self.interruptible):
                if run >= self.config.voice_seconds and self._speech_onset is None:
                    self._speech_onset = self._voiced_since
                return []
            if self._acknowledged_onset is not None:
                return []
            if self._barge is None:
                self._barge = _Barge(self._voiced_since)
                return [PauseOutput(self._voiced_since)]
            self._barge.ended_at = None  # talking again
            return self._decide_barge_in(now)
        if self._speech_onset is None and run >= self.config.min_speech_seconds:
            self._speech_onset = self._voiced_since
        if self._speech_onset is None:
            return []
        turn = self._turn
        turn.stt_endpointed_at = None  # the caller went on: that endpoint was premature
        if self.state is TurnState.PENDING:
            # The caller resumed: the turn goes on; any speculative reply is void.
            self.state = TurnState.USER_SPEAKING
            turn.speech_end = None
            turn.stt_done_at = None
            turn.turn_complete = None
            turn.model_asked = False
            if turn.speculated is not None:
                turn.speculated = None
                return [CancelSpeculation()]
            return []
        if turn.speculated is not None:
            # Speculated on the STT's endpoint, but the caller went on.
            turn.speculated = None
            self.state = TurnState.USER_SPEAKING
            return [CancelSpeculation()]
        self.state = TurnState.USER_SPEAKING
        return []

    def _on_unvoiced(self, now: float) -> list[TurnAction]:
        assert self._unvoiced_since is not None
        silence = max(now - self._unvoiced_since, self._unvoiced_audio)
        quiet = silence >= self.config.vad_silence_seconds
        if quiet:
            self._acknowledged_onset = None
        barge = self._barge
        if barge is not None:
            if quiet and barge.ended_at is None:
                barge.ended_at = self._unvoiced_since
            return self._decide_barge_in(now)
        if self.state is TurnState.RESPONDING:
            if quiet and self._speech_onset is not None:
                self._speech_onset = None
                self._unanswered_speech_end = self._unvoiced_since
            return []
        if self.state is not TurnState.USER_SPEAKING:
            if quiet:
                self._speech_onset = None
            return []
        if not quiet:
            return []
        self.state = TurnState.PENDING
        self._speech_onset = None
        turn = self._turn
        turn.speech_end = self._unvoiced_since
        if turn.stt_endpointed_at is not None and self._sentence_ended(turn.text()):
            # Finished words, endpointed by the STT during this silence: decided.
            turn.stt_done_at = turn.stt_endpointed_at
            turn.turn_complete = True
            return self._maybe_commit(now)
        return [FinalizeStt(), *self._maybe_commit(now)]

    def _maybe_commit(self, now: float) -> list[TurnAction]:
        turn = self._turn
        if self.state is not TurnState.PENDING or turn.speech_end is None:
            return []
        config = self.config
        silence = now - turn.speech_end
        text = turn.text()
        verdict = self._ending(text)
        stt_done = turn.stt_done_at is not None
        if silence >= config.max_wait:
            done = True
        elif verdict is Ending.UNFINISHED:
            # Words that cannot end a sentence: no model or endpoint overrules them.
            done = silence >= config.unfinished_timeout
        elif verdict is Ending.FINISHED:
            done = stt_done
        else:
            model_done = turn.turn_complete is True or not config.use_turn_model
            done = stt_done and (model_done or silence >= config.incomplete_timeout)
        if not done:
            actions: list[TurnAction] = []
            if verdict is Ending.UNKNOWN and config.use_turn_model and not turn.model_asked:
                turn.model_asked = True  # only when the words and the STT leave it open
                actions.append(RunTurnModel(turn.speech_end))
            if config.speculative and text and turn.speculated != text:
                if verdict is not Ending.UNFINISHED:
                    turn.speculated = text
                    actions.append(Speculate(text))
                elif turn.speculated is not None:
                    turn.speculated = None
                    actions.append(CancelSpeculation())
            return actions
        speech_end, stt_done_at = turn.speech_end, turn.stt_done_at
        self._turn = _Turn()
        if not text:
            self.state = TurnState.LISTENING
            return [DiscardTurn()]
        self.state = TurnState.RESPONDING
        return [CommitTurn(text, speech_end, stt_done_at)]

    def _decide_barge_in(self, now: float) -> list[TurnAction]:
        barge = self._barge
        assert barge is not None
        config = self.config
        text = barge.text
        acks = config.acknowledgement_phrases
        if text:
            if has_interruption_phrase(text, config.interruption_phrases):
                return self._interrupt(now)
            if is_acknowledgement(text, acks):
                # "uh-huh": the caller is listening, not taking the turn.
                self._acknowledged_onset = barge.onset if barge.ended_at is None else None
                return self._resume(now)
            maybe_ack = could_become_acknowledgement(text, acks) and not barge.final
            too_few = config.num_words > 0 and word_count(text) < config.num_words
            if not (maybe_ack or too_few):
                return self._interrupt(now)
        if barge.ended_at is not None:
            # The speech is over and its words so far say nothing that takes the turn: ask the
            # STT for the rest, and resume once it has answered (or could have).
            if barge.stt_done or now >= barge.ended_at + config.words_wait:
                return self._resume(now)
            if not barge.finalize_asked:
                barge.finalize_asked = True
                return [FinalizeStt()]
            return []
        if now - barge.onset >= config.barge_in_deadline:
            return self._interrupt(now)  # still talking, words or not: it's a turn
        return []

    def _resume(self, now: float) -> list[TurnAction]:
        self._barge = None
        self._turn = _Turn()
        # Words of that speech may still arrive: they are not a turn of their own unless they
        # say more than an acknowledgement (see `transcript`).
        self._acknowledged_until = now + self.config.acknowledgement_window
        return [ResumeOutput()]

    def _take_words(self, barge: _Barge) -> None:
        """The caller's speech over the assistant becomes the start of their turn."""
        self._turn = _Turn()
        if barge.text:
            if barge.final:
                self._turn.final_text.append(barge.text)
            else:
                self._turn.interim = barge.text

    def _interrupt(self, now: float) -> list[TurnAction]:
        barge = self._barge
        assert barge is not None
        self._barge = None
        self._take_words(barge)
        self._acknowledged_onset = None
        self._acknowledged_until = -math.inf
        self.assistant_audible = False
        actions: list[TurnAction] = [Interrupt(barge.onset)]
        if barge.ended_at is None:
            self.state = TurnState.USER_SPEAKING  # still talking: their turn goes on as usual
            self._speech_onset = barge.onset
            return actions
        # A short interruption ("What?") that was over before its words decided: the turn is
        # already in its end-of-turn decision.
        self.state = TurnState.PENDING
        self._speech_onset = None
        turn = self._turn
        turn.speech_end = barge.ended_at
        if barge.stt_done:
            turn.stt_done_at = now
        elif not barge.finalize_asked:
            actions.append(FinalizeStt())
        return actions + self._maybe_commit(now)

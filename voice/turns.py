"""Turn-taking and barge-in as a pure state machine.

Fed VAD probabilities, transcripts, turn-model verdicts and the assistant's audibility, each with
the time it happened; returns `Action`s for the session to carry out. No I/O, no clock of its own:
tests drive it with explicit times.

End of turn = VAD silence ≥ `vad_silence_seconds`, then both
  - the STT has flushed a final transcript for the speech (`speech_final`), and
  - the turn model calls the utterance complete, or `incomplete_timeout` of silence has passed;
a `max_wait` of silence commits whatever text there is (an STT that never answers must not hang
the call). While the decision is pending the session may speculate on the stable text.
An STT that endpoints by itself (Deepgram's `speech_final`) during the caller's silence, on text
that ends a sentence, has already decided: the turn ends at VAD silence without the turn model,
which saves its ~45 ms of CPU per pause and the wait for its verdict.

Barge-in while the assistant is audible: at speech onset the session stops sending new audio
(`PauseOutput`); once the caller has spoken `voice_seconds` the reply is interrupted unless the
transcript shows only an acknowledgement ("okay", "uh-huh"); an interruption phrase interrupts at
once; a blip shorter than `voice_seconds` resumes output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from voice.phrases import has_interruption_phrase, is_acknowledgement, word_count
from voice.types import Transcript

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
    max_wait: float = 3.0
    use_turn_model: bool = True
    speculative: bool = True
    voice_seconds: float = 0.2
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

    def text(self) -> str:
        parts = [*self.final_text, self.interim] if self.interim else self.final_text
        return " ".join(p.strip() for p in parts if p.strip())


def _ends_sentence(text: str) -> bool:
    return text.rstrip().endswith((".", "?", "!"))


class TurnTaker:
    def __init__(self, config: TurnConfig) -> None:
        self.config = config
        self.state = TurnState.LISTENING
        self.assistant_audible = False
        self.interruptible = True
        self._turn = _Turn()
        self._voiced_since: float | None = None
        self._unvoiced_since: float | None = None
        self._speech_onset: float | None = None  # onset of the caller's current speech
        self._barge_onset: float | None = None  # onset of speech over the assistant (paused)
        self._barge_text = ""
        # Caller speech that began and ended under a reply that could not be interrupted.
        self._unanswered_speech_end: float | None = None
        # Onset of a run of speech already judged an acknowledgement: ignored until it ends.
        self._acknowledged_onset: float | None = None

    # --- inputs ----------------------------------------------------------------------------

    def vad(self, probability: float, now: float) -> list[TurnAction]:
        threshold = (
            self.config.vad_threshold_while_speaking
            if self.assistant_audible
            else self.config.vad_threshold
        )
        if probability >= threshold:
            self._unvoiced_since = None
            if self._voiced_since is None:
                self._voiced_since = now - self.config.vad_window_seconds
            return self._on_voiced(now)
        if self._unvoiced_since is None:
            self._unvoiced_since = now
        self._voiced_since = None
        return self._on_unvoiced(now)

    def transcript(self, result: Transcript, now: float) -> list[TurnAction]:
        text = result.text.strip()
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
                turn.stt_endpointed_at = now
        else:
            turn.interim = text
        if self._barge_onset is not None:
            if text:
                self._barge_text = text
            return self._decide_barge_in(now)
        if self._acknowledged_onset is not None and text and self.assistant_audible:
            if not is_acknowledgement(text, self.config.acknowledgement_phrases):
                # "okay, but what about…": more than an acknowledgement after all.
                return self._interrupt(self._acknowledged_onset)
        if self.state is TurnState.RESPONDING:
            return []  # words for the next turn; VAD opens it
        if self.state is TurnState.LISTENING and result.is_final and text:
            # STT heard words VAD missed (a quiet caller): a turn that already ended.
            self.state = TurnState.PENDING
            turn.speech_end = now
            if result.speech_final:
                turn.stt_done_at = now
            return [FinalizeStt(), RunTurnModel(now), *self._maybe_commit(now)]
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
        if not audible and self._barge_onset is not None:
            # The reply finished playing under the caller's speech: nothing left to interrupt,
            # and the speech simply opens the caller's next turn.
            self._barge_onset = None
            self._barge_text = ""
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
        self._barge_onset = None
        if self.state is not TurnState.RESPONDING:
            return []
        missed, self._unanswered_speech_end = self._unanswered_speech_end, None
        if self._speech_onset is not None:
            self.state = TurnState.USER_SPEAKING
            return []
        if missed is not None:
            # The caller spoke under a reply they could not interrupt: answer them now.
            self.state = TurnState.PENDING
            self._turn.speech_end = missed
            self._turn.stt_done_at = None
            self._turn.turn_complete = None if self.config.use_turn_model else True
            return [FinalizeStt(), RunTurnModel(missed), *self._maybe_commit(now)]
        self.state = TurnState.LISTENING
        return []

    def tick(self, now: float) -> list[TurnAction]:
        if self._barge_onset is not None:
            return self._decide_barge_in(now)
        if self.state is TurnState.PENDING:
            return self._maybe_commit(now)
        return []

    def next_deadline(self) -> float | None:
        """When `tick` may next have something to do."""
        if self._barge_onset is not None:
            return self._barge_onset + self.config.voice_seconds
        if self.state is TurnState.PENDING and self._turn.speech_end is not None:
            end = self._turn.speech_end
            if self._turn.turn_complete:
                return end + self.config.max_wait
            return end + self.config.incomplete_timeout
        return None

    # --- internals -------------------------------------------------------------------------

    def _on_voiced(self, now: float) -> list[TurnAction]:
        assert self._voiced_since is not None
        run = now - self._voiced_since
        if self.state is TurnState.RESPONDING:
            if not (self.assistant_audible and self.interruptible):
                if run >= self.config.voice_seconds and self._speech_onset is None:
                    self._speech_onset = self._voiced_since
                return []
            if self._acknowledged_onset is not None:
                return []
            if self._barge_onset is None:
                self._barge_onset = self._voiced_since
                self._barge_text = ""
                return [PauseOutput(self._barge_onset)]
            return self._decide_barge_in(now)
        if self._speech_onset is None and run >= self.config.min_speech_seconds:
            self._speech_onset = self._voiced_since
        if self._speech_onset is None:
            return []
        self._turn.stt_endpointed_at = None  # the caller went on: that endpoint was premature
        if self.state is TurnState.PENDING:
            # The caller resumed: the turn goes on; any speculative reply is void.
            self.state = TurnState.USER_SPEAKING
            self._turn.speech_end = None
            self._turn.stt_done_at = None
            self._turn.turn_complete = None
            if self._turn.speculated is not None:
                self._turn.speculated = None
                return [CancelSpeculation()]
            return []
        self.state = TurnState.USER_SPEAKING
        return []

    def _on_unvoiced(self, now: float) -> list[TurnAction]:
        assert self._unvoiced_since is not None
        silence = now - self._unvoiced_since
        if silence >= self.config.vad_silence_seconds:
            self._acknowledged_onset = None
        if self._barge_onset is not None:
            if silence >= self.config.vad_silence_seconds:
                return self._resume()  # a blip shorter than voice_seconds: keep talking
            return []
        if self.state is TurnState.RESPONDING:
            if silence >= self.config.vad_silence_seconds and self._speech_onset is not None:
                self._speech_onset = None
                self._unanswered_speech_end = self._unvoiced_since
            return []
        if self.state is not TurnState.USER_SPEAKING:
            if silence >= self.config.vad_silence_seconds:
                self._speech_onset = None
            return []
        if silence < self.config.vad_silence_seconds:
            return []
        self.state = TurnState.PENDING
        self._speech_onset = None
        speech_end = self._unvoiced_since
        turn = self._turn
        turn.speech_end = speech_end
        if turn.stt_endpointed_at is not None and _ends_sentence(turn.text()):
            turn.stt_done_at = turn.stt_endpointed_at
            turn.turn_complete = True
            return self._maybe_commit(now)
        actions: list[TurnAction] = [FinalizeStt(), RunTurnModel(speech_end)]
        if not self.config.use_turn_model:
            self._turn.turn_complete = True
        text = self._turn.text()
        if self.config.speculative and text:
            self._turn.speculated = text
            actions.append(Speculate(text))
        return actions + self._maybe_commit(now)

    def _maybe_commit(self, now: float) -> list[TurnAction]:
        turn = self._turn
        if self.state is not TurnState.PENDING or turn.speech_end is None:
            return []
        silence = now - turn.speech_end
        stt_done = turn.stt_done_at is not None
        turn_done = turn.turn_complete is True or silence >= self.config.incomplete_timeout
        if not ((stt_done and turn_done) or silence >= self.config.max_wait):
            if (
                self.config.speculative
                and stt_done
                and turn.text()
                and turn.speculated != turn.text()
            ):
                turn.speculated = turn.text()
                return [Speculate(turn.text())]
            return []
        text = turn.text()
        speech_end, stt_done_at = turn.speech_end, turn.stt_done_at
        self._turn = _Turn()
        if not text:
            self.state = TurnState.LISTENING
            return [DiscardTurn()]
        self.state = TurnState.RESPONDING
        return [CommitTurn(text, speech_end, stt_done_at)]

    def _decide_barge_in(self, now: float) -> list[TurnAction]:
        onset = self._barge_onset
        assert onset is not None
        config = self.config
        text = self._barge_text
        if text and has_interruption_phrase(text, config.interruption_phrases):
            return self._interrupt(onset)
        if text and is_acknowledgement(text, config.acknowledgement_phrases):
            # "uh-huh": the caller is listening, not taking the turn.
            self._acknowledged_onset = onset
            return self._resume()
        if config.num_words > 0:
            return self._interrupt(onset) if word_count(text) >= config.num_words else []
        # The words lag the sound by ~300 ms: at voice_seconds we interrupt without them, if the
        # caller is still talking (a shorter spike is not an interruption).
        if now - onset >= config.voice_seconds and self._voiced_since is not None:
            return self._interrupt(onset)
        return []

    def _resume(self) -> list[TurnAction]:
        self._barge_onset = None
        self._barge_text = ""
        self._turn = _Turn()
        return [ResumeOutput()]

    def _interrupt(self, onset: float) -> list[TurnAction]:
        self._barge_onset = None
        self._barge_text = ""
        self._acknowledged_onset = None
        self.assistant_audible = False
        self.state = TurnState.USER_SPEAKING
        self._speech_onset = onset
        return [Interrupt(onset)]

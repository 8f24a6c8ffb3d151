"""Per-turn latency breakdown from the timestamps a reply collected (pure)."""

from __future__ import annotations

from voice.events import TurnLatency
from voice.reply import ReplyTimings
from voice.turns import CommitTurn

__all__ = ["turn_latency"]


def turn_latency(
    commit: CommitTurn, timings: ReplyTimings, committed_at: float | None, first_sent: float
) -> TurnLatency:
    """Split end-of-speech → first audio into endpointing, provider waits and our own time.

    With speculation the LLM (and TTS) may start before the turn is confirmed, so only the
    provider time *after* confirmation counts against voice-to-voice; what remains is ours.
    The LLM's share runs until the TTS was first asked to generate (`tts_first_request`): a
    clause of tokens for request-based TTS, the first words for streaming-input TTS — not just
    the first token, because speech cannot start on less.

    A reply held back on purpose (`timings.held_until`: stopSpeakingPlan.backoffSeconds after a
    barge-in, so the caller may go on) waits with its audio ready; that wait is `held`, not
    ours: only the part after the audio was ready (and the turn confirmed) and before it was
    sent counts, since a hold that ends before the first audio arrives delays nothing.
    """
    speech_end = commit.speech_end
    confirmed = committed_at if committed_at is not None else speech_end
    voice_to_voice = first_sent - speech_end
    endpointing = confirmed - speech_end
    stt = (commit.stt_done - speech_end) if commit.stt_done is not None else endpointing
    llm_start = timings.llm_start if timings.llm_start is not None else confirmed
    first_token = timings.llm_first_token if timings.llm_first_token is not None else llm_start
    phrase_ready = (
        timings.tts_first_request if timings.tts_first_request is not None else first_token
    )
    first_audio = timings.tts_first_audio if timings.tts_first_audio is not None else phrase_ready
    llm_wait = max(0.0, phrase_ready - max(confirmed, llm_start))
    tts_wait = max(0.0, first_audio - max(confirmed, phrase_ready))
    held = 0.0
    if timings.held_until is not None:
        held = max(0.0, min(timings.held_until, first_sent) - max(confirmed, first_audio))
    return TurnLatency(
        voice_to_voice=voice_to_voice,
        endpointing=endpointing,
        stt=max(0.0, stt),
        llm_ttft=first_token - llm_start,
        tts_ttfb=first_audio - phrase_ready,
        server=voice_to_voice - endpointing - llm_wait - tts_wait - held,
        held=held,
    )

"""Silero's quiet-window gate: the end of speech is reported when the audio goes quiet, not when
the model's recurrent state lets go (100–250 ms later on synthesized speech)."""

from __future__ import annotations

import numpy as np

from media.g711 import pcm16_to_ulaw, ulaw_silence, ulaw_to_float, ulaw_to_pcm16
from tests.voice.conftest import SpeechClip
from voice.engines import SileroVad

FRAME = 320  # 20 ms of PCM16


def probabilities(vad: SileroVad, ulaw: bytes) -> list[tuple[float, float]]:
    """(time at the end of the window, probability) for each completed window."""
    stream = vad.stream()
    pcm = ulaw_to_pcm16(ulaw)
    out = []
    for i in range(0, len(pcm), FRAME):
        p = stream.process(pcm[i : i + FRAME])
        if p is not None:
            out.append(((i + FRAME) / 16000, p))
    return out


def last_loud_frame_end(ulaw: bytes, dbfs: float) -> float:
    frames = [ulaw[i : i + 160] for i in range(0, len(ulaw) - 159, 160)]
    rms = [float(np.sqrt(np.mean(ulaw_to_float(f) ** 2))) + 1e-9 for f in frames]
    loud = [k for k, r in enumerate(rms) if 20 * np.log10(r) > dbfs]
    return (loud[-1] + 1) * 0.02


def test_end_of_speech_follows_the_audio(
    silero_vad: SileroVad, engine_question_clip: SpeechClip
) -> None:
    ulaw = engine_question_clip.ulaw + ulaw_silence(8000)
    scores = probabilities(silero_vad, ulaw)
    spoken_until = last_loud_frame_end(ulaw, -45.0)
    last_voiced = max(t for t, p in scores if p >= 0.5)
    # at most one 32 ms window (plus the frame it completes in) after the audio went quiet
    assert last_voiced <= spoken_until + 0.032 + 0.02
    assert max(p for t, p in scores if t > spoken_until + 0.06) == 0.0
    # speech itself is untouched: the loud part still scores as speech
    assert np.mean([p > 0.5 for t, p in scores if t < spoken_until - 0.1]) > 0.6


def test_long_quiet_skips_the_model_and_speech_after_it_is_found_as_fast(
    silero_vad: SileroVad, engine_question_clip: SpeechClip
) -> None:
    quiet = bytes([0xFE, 0x7E]) * 10_000  # 2.5 s at ±1 LSB: far below the gate
    stream = silero_vad.stream()
    pcm = ulaw_to_pcm16(quiet)
    reported = [stream.process(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    assert {p for p in reported if p is not None} == {0.0}
    windows = len(pcm) // 512
    assert stream.skipped == windows - 5  # only the first 160 ms of quiet ran the model

    def onset(lead_in: float) -> float:
        """Seconds from the start of the speech to the first window scored as speech."""
        ulaw = ulaw_silence(int(lead_in * 8000)) + engine_question_clip.ulaw
        first = min(t for t, p in probabilities(silero_vad, ulaw) if p >= 0.5)
        return first - lead_in

    # after 3 s of skipped quiet, as quickly as 0.3 s into a fresh stream (within a window)
    assert abs(onset(3.0) - onset(0.3)) <= 0.032


def test_quiet_speech_still_opens_the_gate(
    silero_vad: SileroVad, engine_question_clip: SpeechClip
) -> None:
    """The gate (-45 dBFS mean square per 32 ms window) skips the model only on line-level
    quiet: speech 20 dB below the clip's level (about -38 dBFS, a very soft telephone talker) is
    still found, as early as the model finds it without any gate."""
    pcm = np.frombuffer(ulaw_to_pcm16(engine_question_clip.ulaw), dtype="<i2")
    soft = (pcm * 0.1).astype("<i2")  # -20 dB
    rms = float(np.sqrt(np.mean((soft / 32768.0) ** 2)))
    assert -42 < 20 * np.log10(rms) < -34
    lead_in = np.zeros(int(0.5 * 8000), dtype="<i2")  # long enough for the gate to close
    audio = pcm16_to_ulaw(np.concatenate((lead_in, soft)).tobytes())
    scores = probabilities(silero_vad, audio)
    voiced = [t for t, p in scores if p >= 0.5]
    loud = [t for t, p in probabilities(silero_vad, engine_question_clip.ulaw) if p >= 0.5]
    assert len(voiced) >= 0.6 * len(loud)  # most of the words, not just a blip

    ungated = silero_vad.stream()
    ungated_onset = None
    pcm_all = ulaw_to_pcm16(audio)
    for i in range(0, len(pcm_all), FRAME):
        # Feed the model every window directly, as if there were no gate.
        ungated._pending += pcm_all[i : i + FRAME]
        while len(ungated._pending) >= 512:
            window = np.frombuffer(bytes(ungated._pending[:512]), dtype="<i2")
            ungated._input[0, :32] = ungated._input[0, 256:]
            ungated._input[0, 32:] = window / 32768.0
            del ungated._pending[:512]
            if ungated._run() >= 0.5 and ungated_onset is None:
                ungated_onset = (i + FRAME) / 16000
    assert ungated_onset is not None
    # within one window (plus the frame that completes it) of the ungated model
    assert min(voiced) <= ungated_onset + 0.032 + 0.02

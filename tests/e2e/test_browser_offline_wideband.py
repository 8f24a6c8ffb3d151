"""A browser call on the offline engines at 16 kHz, end to end over real WebRTC on this host.

The browser (aiortc, as in tests/control/test_webrtc_calls.py) says a question synthesized by
the Piper voice at 16 kHz, so its sibilants above 4 kHz are in the microphone signal; AVA hears
it through Silero VAD and Whisper at 16 kHz (no telephone band on the way), answers with the
local responder and Piper at 16 kHz, and the browser measures what it receives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from control.app import create_app
from control.engines import EngineHub
from media.audio_format import MULAW_8K, PCM16_16K
from media.resample import resample_once
from tests.conftest import AssistantFactory, serve, settings_for
from tests.control.test_webrtc_calls import GREETING, browser, dev_call

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

QUESTION = "What are your opening hours?"


def high_band_share(samples: np.ndarray, rate: int) -> float:
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(power[(freqs > 4200) & (freqs < 7800)].sum() / power.sum())


async def test_a_browser_call_on_the_offline_engines_is_wideband(
    hub: EngineHub, tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    tts = hub.piper.tts(noise_scale=0.0, noise_w_scale=0.0).for_format(PCM16_16K)
    question = b"".join([c.audio async for c in tts.synthesize(QUESTION)])
    question_48k = np.frombuffer(resample_once(question, 16000, 48000), dtype="<i2")

    app = create_app(settings_for(assistant_file(), tmp_path), engines=hub)
    async with serve(app) as base, browser() as peer:
        assert (await peer.call(base)).status_code == 200
        started = await peer.wait_type("call-started")
        greeting_event = await peer.wait_type("message", role="bot", seconds=20)
        greeting = np.concatenate(peer.received)
        peer.mic.say_48k(question_48k)
        user = await peer.wait_type("message", role="user", seconds=30)
        assert "hours" in user["text"].lower()
        reply = await peer.wait_for(
            lambda e: e["type"] == "message" and e["role"] == "bot" and e is not greeting_event,
            seconds=30,
        )
        assert reply["text"].startswith("We are open from nine")
        peer.hang_up()
        await peer.wait_type("call-ended")
        record = await dev_call(base, started["callId"])
    assert record["endedReason"] == "customer-ended-call"
    # The greeting the browser decoded against the greeting as synthesized (from the cache, as
    # played): its 4–8 kHz band arrived; the phone's rendition of it has next to none there.
    voice = hub.piper.tts()
    wide = hub.greetings.get(voice.for_format(PCM16_16K), GREETING, PCM16_16K)
    phone = hub.greetings.get(voice, GREETING)
    assert wide is not None and phone is not None
    wide_share = high_band_share(np.frombuffer(wide.audio, "<i2").astype(float), 16000)
    phone_48k = resample_once(MULAW_8K.to_pcm16(phone.audio), 8000, 48000)
    phone_share = high_band_share(np.frombuffer(phone_48k, "<i2").astype(float), 48000)
    loud = greeting[np.abs(greeting) > 0.01]
    assert len(loud) > 48000  # over a second of it
    heard_share = high_band_share(greeting, peer.received_rate)
    # Measured: heard 0.48% of the energy, synthesized 0.48%, the phone's rendition 0.03%.
    assert heard_share == pytest.approx(wide_share, rel=0.5)
    assert heard_share > 5 * phone_share

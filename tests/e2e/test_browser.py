"""The browser page end to end: Debian's Chromium, a fake microphone, a live AVA on the offline
engines.

Chromium (never a downloaded browser: `.ci/run` installs Debian's) runs headless with a fake
microphone that plays a WAV synthesized at test time with the Piper voice: a few seconds of
silence while the greeting plays, then the question. The test drives the page like a user
(open it, press Call, hang up) and checks what the page shows and measured: the question in
the transcript, the assistant's audio arriving (WebAudio level and WebRTC's totalAudioEnergy),
the turn in the latency waterfall, and the call in the recent-calls list. A screenshot goes to
tests/artifacts/ for CI.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import Page, async_playwright

from control.app import create_app
from control.engines import EngineHub
from media.g711 import ulaw_to_pcm16
from media.resample import resample_once
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from voice.engines.synthesize import synthesize_ulaw

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
QUESTION = "What are your opening hours?"
LEAD_IN_SECONDS = 7.0  # the greeting (about 3 s) plays first and is not interruptible
WAV_RATE = 48000  # Chromium's capture rate; the file is played as is, once (%noloop)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    # Outside CI a machine without Chromium skips; in CI (.ci/run installs it) it must run.
    pytest.mark.skipif(
        not CHROMIUM.exists() and os.environ.get("CI") != "true",
        reason="needs Debian's Chromium: apt-get install -y chromium",
    ),
]


def write_speech_wav(path: Path, ulaw: bytes, lead_in: float, tail: float) -> None:
    """16-bit mono PCM at 48 kHz: silence, the speech, silence."""
    speech = np.frombuffer(resample_once(ulaw_to_pcm16(ulaw), 8000, WAV_RATE), dtype="<i2")
    pcm = np.concatenate(
        [
            np.zeros(int(lead_in * WAV_RATE), dtype="<i2"),
            speech,
            np.zeros(int(tail * WAV_RATE), dtype="<i2"),
        ]
    )
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(WAV_RATE)
        wav.writeframes(pcm.tobytes())


@pytest.fixture(scope="module")
def speech_wav(hub: EngineHub, tmp_path_factory: pytest.TempPathFactory) -> Path:
    [question] = synthesize_ulaw([QUESTION], hub.piper)
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    write_speech_wav(path, question, LEAD_IN_SECONDS, tail=30.0)
    return path


async def page_stats(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] = await page.evaluate("() => ({...window.ava.stats})")
    return stats


async def test_browser_call_on_the_offline_engines(
    hub: EngineHub, speech_wav: Path, tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = create_app(settings_for(assistant_file(), tmp_path), engines=hub)
    async with serve(app) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}%noloop",
                "--disable-background-networking",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 1000})
            await page.goto(f"{base}/web/")
            status = page.get_by_test_id("status")
            await page.wait_for_function(
                "document.querySelector('[data-testid=status]').textContent === 'ready'"
            )
            assert "dev mode" in (await page.get_by_test_id("assistant").inner_text())
            await page.get_by_test_id("call").click()
            await page.wait_for_function("window.ava.stats.connected", timeout=15_000)
            assert await status.inner_text() == "in call"

            # The reply's turn is reported once the reply has played in full.
            await page.wait_for_function("window.ava.stats.turns >= 1", timeout=45_000)
            transcript = await page.get_by_test_id("transcript").inner_text()
            assert "opening hours" in transcript.lower(), transcript
            assert "We are open from nine" in transcript, transcript
            stats = await page_stats(page)
            # Measured in the page: the assistant's voice was played there, not just sent.
            assert stats["botPeak"] > 0.02, stats
            assert stats["botVoicedMs"] > 3000, stats  # greeting + reply, several seconds
            assert stats["audioEnergy"] > 0.01, stats
            assert stats["transcripts"] >= 1, stats  # shown live, before the turn was taken
            turns = page.get_by_test_id("waterfall").locator("[data-testid=turn]")
            assert await turns.count() == 1
            assert "ms voice-to-voice" in await turns.first.inner_text()

            await page.get_by_test_id("hangup").click()
            await page.wait_for_function("window.ava.stats.endedReason !== null")
            assert (await page_stats(page))["endedReason"] == "customer-ended-call"
            row = page.get_by_test_id("calls").locator(f"tr[data-call-id='{stats['callId']}']")
            await row.wait_for(timeout=10_000)
            cells = await row.inner_text()
            assert "webCall" in cells and "customer-ended-call" in cells, cells
            await row.click()
            detail = page.get_by_test_id("call-detail")
            await detail.get_by_text("We are open from nine", exact=False).wait_for()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "webrtc-call.png"), full_page=True)
            assert not stats["errors"], stats["errors"]
        finally:
            await browser.close()
    assert app.state.webrtc.opened == app.state.webrtc.closed == 1


async def test_the_page_explains_what_went_wrong(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """Wrong key, microphone denied, server gone: each a plain sentence in the page."""
    app = create_app(settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], []))
    async with async_playwright() as playwright:
        # Without --use-fake-ui-for-media-stream nobody answers the permission prompt: denied.
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--use-fake-device-for-media-stream",
                "--disable-background-networking",
            ],
        )
        try:
            page = await browser.new_page()
            error = page.get_by_test_id("error")
            async with serve(app) as base:
                await page.goto(f"{base}/web/")
                await page.wait_for_function(
                    "document.querySelector('[data-testid=status]').textContent === 'ready'"
                )
                await page.get_by_test_id("call").click()
                await error.wait_for()
                assert "Microphone access was denied" in await error.inner_text()

                await page.fill("#key", "ava_000000000000_not-a-real-key")
                await page.click("#use-key")
                await page.wait_for_function(
                    "document.querySelector('[data-testid=error]').textContent.includes('refused')"
                )
                assert "invalid or revoked API key" in await error.inner_text()
            # The server is gone now.
            await page.fill("#key", "")
            await page.click("#use-key")
            await page.wait_for_function(
                "document.querySelector('[data-testid=error]').textContent.includes('reach')"
            )
            assert "Cannot reach the AVA server" in await error.inner_text()
        finally:
            await browser.close()
    assert app.state.webrtc.opened == 0

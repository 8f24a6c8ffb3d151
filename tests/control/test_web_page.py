"""The tester page's call list (summary, cost, a recording player) and outbound form.

The page itself is plain HTML/JS (control/web): cheap static checks that it has the elements,
calls the endpoints below and never parses server text as HTML; and API tests of what it reads
and sends: the call list's fields, the signed recording URL an <audio> element plays without the
key (tenant-isolated; the dev scope's only in dev mode), and POST /call with the form's body
through the loopback fake Twilio REST."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from playwright.async_api import async_playwright

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.webrtc_routes import WEB_DIR
from storage.recordings import Recordings
from tests.conftest import AssistantFactory, migrated_sqlite
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from voice.recording_urls import RECORDING_BASE_URL

pytestmark = pytest.mark.timeout(60)

CHROMIUM = Path("/usr/bin/chromium")

HTML = (WEB_DIR / "index.html").read_text()
JS = (WEB_DIR / "app.js").read_text()
RATE = 8000
SUMMARY = '<img src=x onerror="alert(1)"> The caller booked a table for two.'
COSTS: list[dict[str, Any]] = [
    {"type": "transport", "cost": 0.0085},
    {"type": "transcriber", "cost": 0.0043},
    {"type": "model", "cost": 0.0012, "promptTokens": 900, "completionTokens": 40},
    {"type": "voice", "cost": 0.0201, "characters": 120},
]


# --- the page, statically ------------------------------------------------------------------------


def test_every_element_the_script_looks_up_is_on_the_page() -> None:
    used = set(re.findall(r'\$\("([\w-]+)"\)', JS))
    present = set(re.findall(r'\bid="([\w-]+)"', HTML))
    assert {"calls", "outbound", "out-vars", "place-call"} <= used
    assert used <= present, used - present


def test_the_call_list_shows_cost_summary_and_a_recording_player() -> None:
    header = re.search(r"<thead>(.*?)</thead>", HTML, re.S)
    assert header is not None
    columns = re.findall(r"<th>([^<]*)</th>", header.group(1))
    assert {"cost", "summary", "recording"} <= set(columns), columns
    # What it reads of a call, and where the player's signed URL comes from.
    for needle in ("analysis.summary", "costBreakdown", "recordingUrl", "presignedRecordingUrl"):
        assert needle in JS, needle
    assert "`${base}/${encodeURIComponent(id)}/recording`" in JS
    assert 'const base = state.key ? "/call" : "/dev/call";' in JS
    assert 'document.createElement("audio")' in JS


def test_the_outbound_form_posts_the_call_with_its_variables() -> None:
    form = re.search(r'<form id="outbound".*?</form>', HTML, re.S)
    assert form is not None
    for element in ("out-assistant", "out-number", "out-customer", "out-vars", "place-call"):
        assert f'id="{element}"' in form.group(0), element
    assert 'api("/call", { method: "POST", body })' in JS
    assert "body.assistantOverrides = { variableValues }" in JS
    assert 'api("/phone-number?limit=100")' in JS


def test_server_text_is_never_parsed_as_html() -> None:
    # Names, summaries and transcripts are the tenant's (or the caller's) text: they go in with
    # textContent only. None of the DOM's HTML parsers appears in the script.
    for parser in (
        "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser",
        "createContextualFragment", "srcdoc", "eval(", "new Function",
    ):  # fmt: skip
        assert parser not in JS, parser
    assert JS.count(".textContent =") >= 20
    # The one script is the module file; no inline handlers anywhere on the page.
    assert re.findall(r"<script[^>]*>", HTML) == ['<script type="module" src="app.js">']
    assert not re.search(r"\son\w+=", HTML)


async def test_the_server_serves_the_page_and_its_script(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        page = await anonymous.get("/web/")
        script = await anonymous.get("/web/app.js")
    assert page.status_code == 200 and 'id="outbound"' in page.text
    assert script.status_code == 200 and "placeOutbound" in script.text


# --- what the call list reads ------------------------------------------------------------------


async def recorded_call(api: Api, tenant_id: str | None, call_id: str) -> None:
    """An ended call of `tenant_id` (None: the dev scope) with a kept recording, an analysis
    and priced costs."""
    calls = api.stores.calls
    await calls.create_call(
        tenant_id, type="webCall", call_id=call_id, metadata={RECORDING_BASE_URL: api.base}
    )
    recordings: Recordings = api.app.state.recordings
    writer = recordings.writer(call_id, RATE)
    await writer.open({"callId": call_id, "tenantId": tenant_id, "format": "wav;l16"})
    frames = np.zeros((RATE // 2, 2), dtype="<i2")
    frames[:, 0] = 1000
    writer.write(frames.tobytes())
    await writer.aclose()
    await recordings.closed(call_id, tenant_id, writer, "wav;l16")
    assert await recordings.keep(call_id, tenant_id)
    assert await calls.set_analysis(call_id, {"summary": SUMMARY, "successEvaluation": "true"})
    async with calls.batch() as writes:
        await writes.set_costs(call_id, COSTS)
    assert await calls.finish_call(call_id, "customer-ended-call")


async def played(url: str, base: str) -> httpx.Response:
    """GET the signed URL as the page's <audio> does: its path on the page's origin, no key."""
    parts = urlsplit(url)
    async with httpx.AsyncClient(base_url=base) as anonymous:
        return await anonymous.get(f"{parts.path}?{parts.query}", headers={"Range": "bytes=0-"})


async def test_the_call_list_carries_summary_cost_and_a_playable_recording(api: Api) -> None:
    await recorded_call(api, api.tenant_a, "call_page1")
    [call] = (await api.a.get("/call", params={"limit": 10})).json()
    assert call["analysis"]["summary"] == SUMMARY  # shown as text, never as markup
    assert call["cost"] == pytest.approx(0.0341)
    breakdown = call["costBreakdown"]
    assert (breakdown["transport"], breakdown["stt"], breakdown["llm"], breakdown["tts"]) == (
        0.0085, 0.0043, 0.0012, 0.0201,
    )  # fmt: skip
    assert breakdown["llmPromptTokens"] == 900 and breakdown["ttsCharacters"] == 120
    assert call["artifact"]["recordingUrl"].endswith("/call/call_page1/mono-recording")

    info = (await api.a.get("/call/call_page1/recording")).json()
    assert "token=" in info["presignedRecordingUrl"]
    audio = await played(info["presignedRecordingUrl"], api.base)
    assert audio.status_code == 206 and audio.headers["content-type"] == "audio/wav"
    assert len(audio.content) == 44 + RATE  # half a second of 16-bit mono after the header
    stereo = await played(info["presignedStereoRecordingUrl"], api.base)
    assert stereo.status_code == 206 and len(stereo.content) == 44 + 2 * RATE


async def test_the_signed_url_is_the_tenants_own(api: Api) -> None:
    await recorded_call(api, api.tenant_a, "call_page1")
    assert (await api.b.get("/call/call_page1/recording")).status_code == 404
    assert [c["id"] for c in (await api.b.get("/call")).json()] == []
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        assert (await anonymous.get("/call/call_page1/recording")).status_code == 401
        # Dev mode serves the dev scope's calls without a key, never a tenant's.
        assert (await anonymous.get("/dev/call/call_page1/recording")).status_code == 404


async def test_dev_scope_calls_play_without_a_key_in_dev_mode(api: Api) -> None:
    await recorded_call(api, None, "call_dev1")
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        [listed] = (await anonymous.get("/dev/call")).json()
        assert listed["summary"] == SUMMARY and listed["cost"] > 0
        info = (await anonymous.get("/dev/call/call_dev1/recording")).json()
        assert (await anonymous.get("/dev/call/nope/recording")).status_code == 404
    audio = await played(info["presignedRecordingUrl"], api.base)
    assert audio.status_code == 206 and len(audio.content) == 44 + RATE
    # A tenant's key does not reach the dev scope's call through /call.
    assert (await api.a.get("/call/call_dev1/recording")).status_code == 404


async def test_dev_scope_recordings_are_404_outside_dev_mode(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url, twilio_auth_token="not-dev-mode")
    async with running_api(app) as api:
        await recorded_call(api, None, "call_dev1")
        async with httpx.AsyncClient(base_url=api.base) as anonymous:
            response = await anonymous.get("/dev/call/call_dev1/recording")
        assert response.status_code == 404 and "dev mode only" in response.text


# --- what the outbound form sends ----------------------------------------------------------------


async def test_the_outbound_forms_body_places_a_call_with_its_variables(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={NUMBER["twilioAccountSid"]: AUTH_TOKEN}))
    async with serve(fake.app) as twilio_base:
        app = api_app(tmp_path, assistant_file, database_url, twilio_api_base_url=twilio_base)
        async with running_api(app) as api:
            assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            # What the page lists, then what it sends (app.js outboundBody()).
            assert [n["id"] for n in (await api.a.get("/phone-number?limit=100")).json()] == [
                number
            ]
            body: dict[str, Any] = {
                "assistantId": assistant,
                "phoneNumberId": number,
                "customer": {"number": "+15557654321"},
                "assistantOverrides": {"variableValues": {"name": "Ada", "order": "A-17"}},
            }
            response = await api.a.post("/call", json=body)
            assert response.status_code == 201, response.text
            call = response.json()
            assert call["type"] == "outboundPhoneCall"
            assert call["assistant"]["variableValues"] == {"name": "Ada", "order": "A-17"}
            [placed] = fake.calls.values()
            assert (placed.to, placed.from_) == ("+15557654321", NUMBER["number"])
            # Tenant B, with an assistant of its own, cannot call from A's number.
            theirs = (await api.b.post("/assistant", json=ASSISTANT)).json()["id"]
            refused = await api.b.post("/call", json={**body, "assistantId": theirs})
            assert refused.status_code == 422 and "not found" in refused.text
            assert len(fake.calls) == 1
            async with httpx.AsyncClient(base_url=api.base) as anonymous:
                assert (await anonymous.post("/call", json=body)).status_code == 401


# --- the page in a browser: no call, no microphone, a few seconds ----------------------------


@pytest.mark.e2e
@pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true",
    reason="needs Debian's Chromium: apt-get install -y chromium",
)
async def test_the_page_lists_plays_and_places_calls_in_chromium(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={NUMBER["twilioAccountSid"]: AUTH_TOKEN}))
    async with serve(fake.app) as twilio_base:
        database = migrated_sqlite(tmp_path / "db")
        app = api_app(tmp_path, assistant_file, database, twilio_api_base_url=twilio_base)
        async with running_api(app) as api, async_playwright() as playwright:
            await api.a.post("/assistant", json=ASSISTANT)
            await api.a.post("/phone-number", json=NUMBER)
            await recorded_call(api, api.tenant_a, "call_page1")
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--no-sandbox", "--disable-background-networking"],
            )  # fmt: skip
            try:
                page = await browser.new_page()
                await page.goto(f"{api.base}/web/")
                await page.fill("#key", api.key_a)
                await page.click("#use-key")
                row = page.locator("tr[data-call-id='call_page1']")
                await row.wait_for(timeout=10_000)
                # The summary is shown as the text it is: no element was made of it.
                assert await row.locator("td.summary").inner_text() == SUMMARY
                assert await page.locator("#calls img").count() == 0
                cost = row.locator("td.cost")
                assert await cost.inner_text() == "$0.03"
                assert "voice: $0.02" in (await cost.get_attribute("title") or "")
                await row.get_by_test_id("play-recording").click()
                audio = row.get_by_test_id("recording")
                await audio.wait_for()
                assert "token=" in (await audio.get_attribute("src") or "")
                # The browser fetched the signed URL without the key and read a 0.5 s WAV.
                duration = await audio.evaluate(
                    """a => new Promise((done) => a.readyState >= 1 ? done(a.duration)
                       : a.addEventListener("loadedmetadata", () => done(a.duration)))"""
                )
                assert duration == pytest.approx(0.5, abs=0.01)

                await page.wait_for_function("!document.querySelector('#place-call').disabled")
                await page.fill("#out-customer", "+15557654321")
                await page.locator("#out-vars .var-name").fill("name")
                await page.locator("#out-vars .var-value").fill("Ada")
                await page.click("#place-call")
                await page.wait_for_function("window.ava.stats.outboundCallId !== null")
                call_id = await page.evaluate("window.ava.stats.outboundCallId")
                assert "Placed" in await page.get_by_test_id("out-result").inner_text()
            finally:
                await browser.close()
            call = (await api.a.get(f"/call/{call_id}")).json()
            assert call["assistant"]["variableValues"] == {"name": "Ada"}
            assert [c.to for c in fake.calls.values()] == ["+15557654321"]

"""A saturated node sheds new calls and keeps its live ones (control/loop_lag.py).

Saturation is injected through the app's own `LoopLag` with samples stamped an hour ahead of
its monitor task's, which it then ignores (older than the newest): the node is saturated, and
recovers, exactly when the test says, whatever the machine's real load. Nothing burns CPU.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from fastapi import FastAPI

from control.app import create_app
from control.loop_lag import INTERVAL, LoopLag
from control.twilio_routes import MAX_DRAIN_REDIRECTS
from media.twilio.caller import CallScript, parse_twiml, place_call
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
REPLY = "We open at nine in the morning and close at six in the evening, Monday to Friday."


def inject(app: FastAPI, start: float, seconds: float, late: float) -> float:
    """Lag samples every INTERVAL from `start` for `seconds`; returns the last one's time."""
    lag: LoopLag = app.state.loop_lag
    now = start
    for _ in range(round(seconds / INTERVAL)):
        now += INTERVAL
        lag.observe(now, late)
    return now


def saturate(app: FastAPI) -> float:
    ahead = asyncio.get_running_loop().time() + 3600
    now = inject(app, ahead, 2.0, 0.5)
    assert app.state.loop_lag.saturated
    return now


def recover(app: FastAPI, now: float) -> None:
    policy = app.state.loop_lag.policy
    inject(app, now, policy.window + policy.recover_after + 1.0, 0.002)
    assert not app.state.loop_lag.saturated


async def live_call(app: FastAPI) -> None:
    for _ in range(500):
        if app.state.calls.live:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the call never went live")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


async def test_a_saturated_node_refuses_new_calls_and_keeps_live_ones(
    tmp_path: Path, assistant_file: AssistantFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ava.load")
    engines = ScriptedEngines(["What are your hours?"], [REPLY], seconds_per_char=0.02)
    settings = settings_for(assistant_file(), tmp_path, shed_loop_lag_ms=60)
    app = create_app(settings, engines=engines)
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/readyz")).status_code == 200
        call = asyncio.create_task(place_call(base, CallScript([SPEECH])))
        await live_call(app)

        now = saturate(app)
        moved = await http.post("/twilio/voice", data={"CallSid": "CA9"})
        refused = await http.post(
            f"/twilio/voice?ava_redirects={MAX_DRAIN_REDIRECTS}", data={"CallSid": "CA9"}
        )
        web = await http.post("/webrtc/offer", json={"sdp": "v=0", "type": "offer"})
        ready = await http.get("/readyz")
        scraped = (await http.get("/metrics")).text
        # Through the balancer to another node, as a draining node does; 503 past the hops.
        assert moved.status_code == 200, moved.text
        target = ElementTree.fromstring(moved.text).find("Redirect")
        assert target is not None and target.text == f"{base}/twilio/voice?ava_redirects=1"
        assert refused.status_code == 503 and "saturated" in refused.text
        assert web.status_code == 503
        assert "overloaded" in web.json()["message"]
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "liveCalls": 1, "reason": "saturated"}
        assert metric(scraped, 'ava_calls_refused_total{reason="saturated"}') == 3
        assert metric(scraped, 'ava_calls_refused_total{reason="draining"}') == 0
        assert metric(scraped, "ava_event_loop_saturated") == 1
        assert metric(scraped, "ava_event_loop_lag_seconds_count") > 0  # the real task's samples
        assert app.state.calls.live  # untouched by all of that

        recover(app, now)
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and "reason" not in ready.json()
        accepted = await http.post("/twilio/voice", data={"CallSid": "CA10"})
        assert parse_twiml(accepted.text).url.endswith("/twilio/media")
        web = await http.post("/webrtc/offer", json={"sdp": "v=0", "type": "offer"})
        assert web.status_code == 400, web.text  # past admission, refused for its SDP only
        scraped = (await http.get("/metrics")).text
        assert metric(scraped, "ava_event_loop_saturated") == 0

        report = await asyncio.wait_for(call, 30)
    assert report.error is None, report.error
    assert report.record is not None
    assert report.record["ended_reason"] == "customer-ended-call"
    assert [t["assistant"] for t in report.record["turns"]] == [REPLY]
    lines = [
        (r.levelno, r.getMessage().split(":")[0]) for r in caplog.records if r.name == "ava.load"
    ]
    assert lines == [
        (logging.WARNING, "event loop saturated"),
        (logging.INFO, "event loop recovered"),
    ]


async def test_at_max_calls_the_webhook_redirects_and_readyz_says_why(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(["What are your hours?"], [REPLY], seconds_per_char=0.02)
    settings = settings_for(assistant_file(), tmp_path, max_calls=1)
    app = create_app(settings, engines=engines)
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as http:
        call = asyncio.create_task(place_call(base, CallScript([SPEECH])))
        await live_call(app)
        moved = await http.post("/twilio/voice", data={"CallSid": "CA9"})
        ready = await http.get("/readyz")
        assert ElementTree.fromstring(moved.text).find("Redirect") is not None
        assert ready.status_code == 503 and ready.json()["reason"] == "max_calls"
        # A caller following the redirects as Twilio does (this one node is every node the
        # balancer has) is refused once they run out: refused, not failed.
        turned_away = await place_call(base, CallScript([SPEECH]), fetch_record=False)
        assert turned_away.error is None and not turned_away.ok
        assert turned_away.refused is not None and "max_calls" in turned_away.refused
        scraped = (await http.get("/metrics")).text
        refusals = metric(scraped, 'ava_calls_refused_total{reason="max_calls"}')
        assert refusals == 1 + MAX_DRAIN_REDIRECTS + 1  # the probe above, then each hop
        report = await asyncio.wait_for(call, 30)
        assert report.error is None, report.error
        assert (await http.get("/readyz")).status_code == 200

"""POST /webrtc/offer's guard rails: who may call which assistant, bad offers, the per-tenant
limit, web tokens, dev mode, ICE servers, and the page itself. Every peer connection opened
must be closed and counted (`app.state.webrtc.opened == closed`)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from control.settings import IceServer, Settings
from control.stream_token import issue_token
from control.webrtc_routes import WEB_DIR, WebCalls
from tests.conftest import AssistantFactory, ScriptedEngines, migrated_sqlite
from tests.control.conftest import ASSISTANT, Api, api_app, running_api
from tests.control.test_webrtc_calls import SPEECH, Browser, browser

pytestmark = pytest.mark.timeout(60)


def web_app(tmp_path: Path, assistant_file: AssistantFactory, **settings: Any) -> FastAPI:
    engines = ScriptedEngines(["What are your hours?"], ["We open at nine."], seconds_per_char=0.01)
    return api_app(
        tmp_path, assistant_file, migrated_sqlite(tmp_path / "db"), engines=engines, **settings
    )


def webrtc(app: FastAPI) -> WebCalls:
    calls: WebCalls = app.state.webrtc
    return calls


async def all_closed(app: FastAPI, opened: int, seconds: float = 10.0) -> None:
    calls = webrtc(app)
    for _ in range(int(seconds / 0.02)):
        if calls.closed >= opened:
            break
        await asyncio.sleep(0.02)
    assert calls.opened == calls.closed == opened
    assert calls.peers == {} and not calls.slots


async def create_assistant(client: httpx.AsyncClient) -> str:
    response = await client.post("/assistant", json=ASSISTANT)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def offer(
    base: str, sdp: str, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, headers=headers or {}) as http:
        return await http.post("/webrtc/offer", json={"sdp": sdp, "type": "offer", **fields})


def message(response: httpx.Response) -> str:
    body = response.json()
    text = body["message"]
    return "; ".join(text) if isinstance(text, list) else str(text)


async def test_a_tenant_call_is_recorded_under_the_tenant(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(tmp_path, assistant_file, twilio_auth_token="not-dev-mode")
    async with running_api(app) as api, browser() as peer:
        assistant_id = await create_assistant(api.a)
        response = await peer.call(api.base, auth(api.key_a), assistantId=assistant_id)
        assert response.status_code == 200, response.text
        started = await peer.wait_type("call-started")
        assert started["assistant"] == ASSISTANT["name"]
        await peer.wait_type("message", role="bot")
        peer.mic.say(SPEECH)
        await peer.wait_type("turn")
        peer.hang_up()
        await peer.wait_type("call-ended")
        await all_closed(app, 1)
        call = await stored_call(api, started["callId"])
        assert call["type"] == "webCall" and call["assistantId"] == assistant_id
        assert call["orgId"] == api.tenant_a and call["endedReason"] == "customer-ended-call"
        assert [m["message"] for m in call["messages"]][1:] == [
            "What are your hours?",
            "We open at nine.",
        ]
        assert (await api.b.get(f"/call/{call['id']}")).status_code == 404


async def stored_call(api: Api, call_id: str) -> dict[str, Any]:
    for _ in range(100):
        response = await api.a.get(f"/call/{call_id}")
        if response.status_code == 200 and response.json()["status"] == "ended":
            return dict(response.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} not recorded")


async def test_bad_offers_get_a_clear_4xx_and_leak_nothing(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(tmp_path, assistant_file)  # dev mode: the default assistant needs no key
    async with running_api(app) as api, browser() as peer:
        sdp = await peer.offer()
        assistant_a = await create_assistant(api.a)

        response = await offer(api.base, "garbage")
        assert response.status_code == 400
        assert "bad SDP offer: not an SDP offer" in message(response)
        response = await offer(api.base, sdp.replace("a=sendrecv", "a=recvonly"))
        assert response.status_code == 400 and "needs sendrecv" in message(response)
        response = await offer(api.base, re.sub(r"a=fingerprint:[^\r\n]*\r\n", "", sdp))
        assert response.status_code == 400 and "DTLS fingerprint" in message(response)
        # Each of those had a peer connection: all closed and counted.
        await all_closed(app, 3)

        response = await offer(api.base, sdp, auth(api.key_b), assistantId=assistant_a)
        assert response.status_code == 404 and message(response) == "assistant not found"
        response = await offer(api.base, sdp, auth("ava_0123456789ab_wrong"), assistantId="x")
        assert response.status_code == 401 and "invalid or revoked API key" in message(response)
        response = await offer(api.base, sdp, auth(api.key_a))
        assert response.status_code == 422 and "assistantId" in message(response)
        response = await offer(api.base, sdp, assistantId=assistant_a)  # no key, not `default`
        assert response.status_code == 401 and "missing credentials" in message(response)
        async with httpx.AsyncClient(base_url=api.base) as http:
            response = await http.post("/webrtc/offer", json={"sdp": sdp, "type": "answer"})
        assert response.status_code == 422
        assert webrtc(app).opened == 3  # refused before any connection was made


async def test_the_per_tenant_limit_and_connections_that_never_come_up(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(
        tmp_path,
        assistant_file,
        webrtc_max_calls_per_tenant=1,
        webrtc_connect_timeout_seconds=1.0,
    )
    async with running_api(app) as api:
        assistant_a = await create_assistant(api.a)
        assistant_b = await create_assistant(api.b)
        async with browser() as first, browser() as second, browser() as other:
            # The answers are never applied: these connections cannot come up.
            response = await offer(
                api.base, await first.offer(), auth(api.key_a), assistantId=assistant_a
            )
            assert response.status_code == 200
            pc_id = response.json()["pc_id"]
            response = await offer(
                api.base, await second.offer(), auth(api.key_a), assistantId=assistant_a
            )
            assert response.status_code == 429
            assert "too many concurrent web calls for this tenant (limit 1)" in message(response)
            response = await offer(
                api.base, await other.offer(), auth(api.key_b), assistantId=assistant_b
            )
            assert response.status_code == 200  # another tenant's slots are its own
        await all_closed(app, 2, seconds=5.0)
        records = [
            r for r in app.state.ava.calls.records.values() if r.metadata.get("pc_id") == pc_id
        ]
        assert records and records[0].ended_detail == "WebRTC connection not established"
        async with browser() as again:
            response = await offer(
                api.base, await again.offer(), auth(api.key_a), assistantId=assistant_a
            )
            assert response.status_code == 200  # the slot was given back
        await all_closed(app, 3, seconds=5.0)


async def test_web_tokens(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    app = web_app(
        tmp_path, assistant_file, twilio_auth_token="not-dev-mode", webrtc_token_ttl_seconds=2
    )
    async with running_api(app) as api:
        assistant_a = await create_assistant(api.a)
        assistant_b = await create_assistant(api.b)
        response = await api.a.post("/webrtc/token", json={"assistantId": assistant_b})
        assert response.status_code == 404  # not the tenant's assistant
        async with httpx.AsyncClient(base_url=api.base) as http:
            assert (
                await http.post("/webrtc/token", json={"assistantId": assistant_a})
            ).status_code == 401
        minted = (await api.a.post("/webrtc/token", json={"assistantId": assistant_a})).json()
        token = minted["token"]
        assert minted["assistantId"] == assistant_a and minted["expiresAt"].endswith("Z")

        async with browser() as peer:
            response = await peer.call(api.base, token=token)  # no API key at all
            assert response.status_code == 200, response.text
            started = await peer.wait_type("call-started")
            peer.hang_up()
            await peer.wait_type("call-ended")
        call = await stored_call(api, started["callId"])
        assert call["assistantId"] == assistant_a and call["type"] == "webCall"

        async with browser() as peer:
            sdp = await peer.offer()
        # A fresh token for the checks below: the call above may outlast the 2 s TTL on a
        # loaded machine, and an expired token is refused before its assistant is looked at.
        token = (await api.a.post("/webrtc/token", json={"assistantId": assistant_a})).json()[
            "token"
        ]
        response = await offer(api.base, sdp, token=token, assistantId=assistant_b)
        assert response.status_code == 403 and "another assistant" in message(response)
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        response = await offer(api.base, sdp, token=forged)
        assert response.status_code == 401 and "invalid web token" in message(response)
        settings: Settings = app.state.ava.settings
        stream_token = issue_token(
            settings.signing_key(),
            {"call_sid": "CA1", "tenant_id": api.tenant_a, "assistant_id": assistant_a},
            now=time.time(),
            ttl=60,
        )
        response = await offer(api.base, sdp, token=stream_token)
        assert response.status_code == 401 and "not a web-call token" in message(response)
        await asyncio.sleep(2.1)
        response = await offer(api.base, sdp, token=token)
        assert response.status_code == 401 and "expired" in message(response)
        await all_closed(app, 1)


async def test_config_dev_mode_and_ice_servers(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    turn = {"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"}
    app = web_app(
        tmp_path, assistant_file, twilio_auth_token="not-dev-mode", webrtc_ice_servers=[turn]
    )
    async with running_api(app) as api:
        async with httpx.AsyncClient(base_url=api.base) as http:
            anonymous = (await http.get("/webrtc/config")).json()
            assert anonymous == {"devMode": False, "defaultAssistant": None, "iceServers": []}
            assert (await http.get("/dev/call")).status_code == 404
            response = await offer(api.base, "v=0\r\n")  # no credentials, not dev mode
            assert response.status_code == 401 and "dev mode" not in message(response)
        config = (await api.a.get("/webrtc/config")).json()
        assert config["iceServers"] == [turn]

    dev = web_app(tmp_path / "dev", assistant_file)
    async with running_api(dev) as api, httpx.AsyncClient(base_url=api.base) as http:
        config = (await http.get("/webrtc/config")).json()
        assert config["devMode"] is True
        assert config["defaultAssistant"] == {"id": "default", "name": "AVA Demo"}
        assert config["iceServers"] == []  # none unless configured: no public STUN lookups
        assert (await http.get("/dev/call")).json() == []


async def test_no_ice_servers_means_host_candidates_only(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(tmp_path, assistant_file)
    async with running_api(app) as api, browser() as peer:
        response = await peer.call(api.base)
        assert response.status_code == 200
        candidates = [
            line for line in response.json()["sdp"].splitlines() if line.startswith("a=candidate")
        ]
        assert candidates and all(" typ host" in line for line in candidates)
        [server_peer] = webrtc(app).peers.values()
        # aiortc's default (no list given) would be Google's public STUN server.
        for transceiver in server_peer.pc.getTransceivers():
            ice = transceiver.sender.transport.transport
            assert ice.iceGatherer._connection.stun_server is None
        await peer.wait_type("call-started")
        peer.hang_up()
        await peer.wait_type("call-ended")
        await all_closed(app, 1)


def test_ice_servers_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AVA_WEBRTC_ICE_SERVERS",
        '[{"urls": "stun:stun.example.com:3478"}, '
        '{"urls": ["turn:t.example.com"], "username": "u", "credential": "c"}]',
    )
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.webrtc_ice_servers == [
        IceServer(urls=["stun:stun.example.com:3478"]),
        IceServer(urls=["turn:t.example.com"], username="u", credential="c"),
    ]
    assert Settings(_env_file=None, webrtc_ice_servers=[]).webrtc_ice_servers == []  # type: ignore[call-arg]


async def test_the_page_is_served_and_self_contained(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(tmp_path, assistant_file)
    async with running_api(app) as api, httpx.AsyncClient(base_url=api.base) as http:
        home = await http.get("/")
        assert home.status_code == 307 and home.headers["location"] == "/web/"
        page = await http.get("/web/")
        assert page.status_code == 200 and 'src="app.js"' in page.text
        for name in ("app.js", "style.css"):
            assert (await http.get(f"/web/{name}")).status_code == 200
    # Nothing is fetched from anywhere else (no CDN, no fonts, no analytics).
    for path in WEB_DIR.iterdir():
        assert not re.search(r"https?://[\w.-]+\.[a-z]{2,}", path.read_text()), path.name
        assert "//cdn" not in path.read_text()


async def test_an_unreachable_peer_is_closed_when_the_app_stops(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(tmp_path, assistant_file, webrtc_connect_timeout_seconds=30)
    peer: Browser
    async with running_api(app) as api:
        async with browser() as peer:
            response = await offer(api.base, await peer.offer())
            assert response.status_code == 200
    # The lifespan's end cancelled the call still waiting to connect and closed its peer.
    calls = webrtc(app)
    assert calls.opened == calls.closed == 1 and calls.peers == {}

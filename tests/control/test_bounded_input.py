"""Bounded input (issue 9, finding 7 and the URL part of finding 2): JSON depth and string
length on every JSON endpoint, Vapi-like field sizes, http(s)-only URLs, `timeoutSeconds: null`,
and a media stream that sends audio faster than real time. Each refusal is a 422 (or a 1008 for
the stream) that names the limit, and a refused create leaves no row."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from pydantic import ValidationError

from control.app import create_app
from control.middleware import JsonLimits
from media.twilio.caller import CallScript, place_call
from storage.crypto import (
    MAX_WALK_DEPTH,
    SecretBox,
    open_secrets,
    seal_secrets,
    without_secrets,
)
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from tests.control.conftest import ASSISTANT, NUMBER, TOOL, Api, running_api
from tests.control.test_twilio_calls import SPEECH, dev_record, open_stream
from tests.control.test_webrtc_api import auth, message, offer, web_app
from voice.json_bounds import MAX_DEPTH, MAX_STRING_CHARS, JsonTooComplex
from voice.server_messages import DEFAULT_SERVER_TIMEOUT, ServerTarget

pytestmark = pytest.mark.timeout(60)

DEEP = 900


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text of `depth` nested objects, built as text: json.dumps itself would recurse."""
    return '{"a":' * depth + leaf + "}" * depth


def with_raw(body: dict[str, Any], field: str, raw: str) -> bytes:
    """`body` as JSON with `field` (top level) set to the raw JSON text `raw`."""
    text = json.dumps({**body, field: "__RAW__"})
    return text.replace('"__RAW__"', raw).encode()


async def post_raw(client: httpx.AsyncClient, path: str, content: bytes) -> httpx.Response:
    return await client.post(path, content=content, headers={"content-type": "application/json"})


def messages(response: httpx.Response) -> list[str]:
    text = response.json()["message"]
    return text if isinstance(text, list) else [text]


# --- depth ---------------------------------------------------------------------------------------


async def test_a_tool_nested_900_deep_is_refused_and_the_tool_api_keeps_working(api: Api) -> None:
    function = '{"name":"f","parameters":' + nested(DEEP) + "}"
    response = await post_raw(api.a, "/tool", with_raw({"type": "function"}, "function", function))
    assert response.status_code == 422, response.text
    assert messages(response) == [f"body: JSON nested deeper than {MAX_DEPTH} levels (the limit)"]
    # Nothing was stored, and the tool API still answers (it answered 500 from then on).
    listed = await api.a.get("/tool")
    assert listed.status_code == 200 and listed.json() == []
    tool = (await api.a.post("/tool", json=TOOL)).json()
    assert (await api.a.get(f"/tool/{tool['id']}")).status_code == 200
    patched = await post_raw(api.a, "/tool", b"")  # an empty body is the route's 422, not ours
    assert patched.status_code == 422
    assert (await api.a.patch(f"/tool/{tool['id']}", json={"async": True})).status_code == 200
    deep_patch = await api.a.patch(
        f"/tool/{tool['id']}",
        content=with_raw({}, "function", nested(DEEP)),
        headers={"content-type": "application/json"},
    )
    assert deep_patch.status_code == 422
    assert (await api.a.get(f"/tool/{tool['id']}")).json()["async"] is True
    assert (await api.a.delete(f"/tool/{tool['id']}")).status_code == 200


async def test_metadata_nested_900_deep_is_422(api: Api) -> None:
    response = await post_raw(api.a, "/assistant", with_raw(ASSISTANT, "metadata", nested(DEEP)))
    assert response.status_code == 422, response.text
    assert "nested deeper than 32 levels" in messages(response)[0]
    assert (await api.a.get("/assistant")).json() == []


async def test_depth_just_within_the_limit_is_accepted(api: Api) -> None:
    # The body is level 1 and metadata level 2: 30 more levels of objects in it are fine...
    ok = await post_raw(api.a, "/assistant", with_raw(ASSISTANT, "metadata", nested(30)))
    assert ok.status_code == 201, ok.text
    # ...and one more is not.
    deep = await post_raw(api.a, "/assistant", with_raw(ASSISTANT, "metadata", nested(32)))
    assert deep.status_code == 422
    assert len((await api.a.get("/assistant")).json()) == 1


async def test_brackets_inside_strings_are_not_depth(api: Api) -> None:
    body = copy.deepcopy(ASSISTANT)
    body["metadata"] = {"note": "[" * 5000 + '{"' * 100}
    response = await api.a.post("/assistant", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == body["metadata"]


@pytest.mark.parametrize("path", ["/assistant", "/tool", "/phone-number", "/call"])
async def test_every_json_endpoint_is_bounded(api: Api, path: str) -> None:
    deep = await post_raw(api.a, path, with_raw({"type": "function"}, "x", nested(DEEP)))
    assert deep.status_code == 422, deep.text
    assert "nested deeper than" in messages(deep)[0]
    long = await api.a.post(path, json={"type": "function", "name": "x" * (MAX_STRING_CHARS + 1)})
    assert long.status_code == 422, long.text
    assert messages(long) == [f"name: string longer than {MAX_STRING_CHARS} characters (the limit)"]
    for listing in ("/assistant", "/tool", "/phone-number", "/call"):
        assert (await api.a.get(listing)).json() == [], listing


async def test_json_limits_leave_other_bodies_alone() -> None:
    """Form posts (Twilio's webhooks) and non-JSON bodies reach the app untouched."""
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'{"a":', b"[1,", b"2]}"):
            yield chunk

    transport = httpx.ASGITransport(app=JsonLimits(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        form = await http.post("/twilio/voice", data={"CallSid": "[" * 100})
        assert form.status_code == 200
        other = await http.post("/x", content=chunks(), headers={"content-type": "text/plain"})
        assert other.status_code == 200
        streamed = await http.post("/x", content=chunks())
        assert streamed.status_code == 200
        refused = await http.post("/x", content=b"[" * 40 + b"]" * 40)
        assert refused.status_code == 422
    assert seen == [b"CallSid=" + b"%5B" * 100, b'{"a":[1,2]}', b'{"a":[1,2]}']


# --- field sizes and URLs ------------------------------------------------------------------------


def _assistant(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(ASSISTANT)
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return body


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (_assistant(firstMessage="x" * 900_000), "firstMessage", "longer than 100000"),
        (_assistant(firstMessage="x" * 1001), "firstMessage", "at most 1000"),
        (_assistant(endCallMessage="x" * 1001), "endCallMessage", "at most 1000"),
        (_assistant(voicemailMessage="x" * 1001), "voicemailMessage", "at most 1000"),
        (_assistant(endCallPhrases=["x" * 141]), "endCallPhrases.0", "at most 140"),
        (_assistant(endCallPhrases=["bye"] * 33), "endCallPhrases", "at most 32"),
        (_assistant(metadata={"k": "v" * 17_000}), "metadata", "over 16384"),
        (
            _assistant(model__messages=[{"role": "system", "content": "x" * 60_000}] * 2),
            "model.messages",
            "over 100000",
        ),
        (_assistant(server={"url": "file:///etc/passwd"}), "server", "server.url must be"),
        (_assistant(server={"url": "gopher://x"}), "server", "http:// or https://"),
        (_assistant(serverUrl="file:///etc/passwd"), "server", "server.url must be"),
        (_assistant(server={"url": "https://x", "timeoutSeconds": 0}), "server", "1–300"),
        (_assistant(server={"url": "https://x", "timeoutSeconds": "abc"}), "server", "1–300"),
        (_assistant(server={"url": "https://x", "headers": ["a"]}), "server", "headers must"),
        (
            _assistant(model__provider="custom-llm", model__url="file:///tmp/x"),
            "model.url",
            "url must be",
        ),
        (
            _assistant(model__fallbackModels=[{"provider": "custom-llm", "url": "ftp://x"}]),
            "model.fallbackModels",
            "fallbackModels[0].url must be",
        ),
        (
            _assistant(model__tools=[{**TOOL, "server": {"url": "file:///x"}}]),
            "model.tools",
            "tools[0].server.url must be",
        ),
        (
            _assistant(
                model__tools=[
                    {"type": "function", "function": {"name": f"f{i}"}} for i in range(129)
                ]
            ),  # fmt: skip
            "model.tools",
            "at most 128",
        ),
    ],
)
async def test_field_limits_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str, words: str
) -> None:
    response = await api.a.post("/assistant", json=body)
    assert response.status_code == 422, response.text
    found = [m for m in messages(response) if m.startswith(f"{field}: ")]
    assert found and words in found[0], messages(response)
    assert (await api.a.get("/assistant")).json() == []
    # The same config sent as a PATCH changes nothing either.
    created = (await api.a.post("/assistant", json=ASSISTANT)).json()
    patched = await api.a.patch(f"/assistant/{created['id']}", json=body)
    assert patched.status_code == 422
    assert (await api.a.get(f"/assistant/{created['id']}")).json() == created


@pytest.mark.parametrize(
    ("tool", "words"),
    [
        ({**TOOL, "server": {"url": "file:///etc/passwd"}}, "server.url must be an http"),
        ({**TOOL, "server": {"url": "https://x", "timeoutSeconds": 500}}, "1–300"),
        (
            {**TOOL, "function": {"name": "f", "description": "d" * 40_000}},
            "tool is over 32768 characters",
        ),
        (
            {"type": "transferCall", "destinations": [{"server": {"url": "file:///x"}}]},
            "destinations[0].server.url must be",
        ),
    ],
)
async def test_tool_limits_are_422_and_store_nothing(
    api: Api, tool: dict[str, Any], words: str
) -> None:
    response = await api.a.post("/tool", json=tool)
    assert response.status_code == 422, response.text
    assert words in messages(response)[0]
    assert (await api.a.get("/tool")).json() == []
    created = (await api.a.post("/tool", json=TOOL)).json()
    assert (await api.a.patch(f"/tool/{created['id']}", json=tool)).status_code == 422
    assert (await api.a.get(f"/tool/{created['id']}")).json() == created


async def test_a_phone_numbers_server_url_must_be_http(api: Api) -> None:
    for server in ({"url": "file:///etc/passwd"}, {"url": "https://x", "timeoutSeconds": 0}):
        response = await api.a.post("/phone-number", json={**NUMBER, "server": server})
        assert response.status_code == 422, response.text
        assert messages(response)[0].startswith("server: ")
    assert (await api.a.get("/phone-number")).json() == []
    fine = {"url": "https://hooks.example.com/ar", "timeoutSeconds": None}
    created = await api.a.post("/phone-number", json={**NUMBER, "server": fine})
    assert created.status_code == 201, created.text
    number_id = created.json()["id"]
    patched = await api.a.patch(f"/phone-number/{number_id}", json={"server": {"url": "ftp://x"}})
    assert patched.status_code == 422
    assert (await api.a.get(f"/phone-number/{number_id}")).json()["server"]["url"] == fine["url"]


async def test_a_long_phone_number_field_stores_nothing(api: Api) -> None:
    response = await api.a.post("/phone-number", json={**NUMBER, "name": "n" * 200_000})
    assert response.status_code == 422
    assert (await api.a.get("/phone-number")).json() == []


# --- server.timeoutSeconds: null -----------------------------------------------------------------


NULL_TIMEOUT = {"url": "https://hooks.example.com/ava", "timeoutSeconds": None}


async def test_null_timeout_is_saved_and_means_the_default(api: Api) -> None:
    created = await api.a.post("/assistant", json={**ASSISTANT, "server": NULL_TIMEOUT})
    assert created.status_code == 201, created.text
    record = await api.stores.assistants.get(api.tenant_a, created.json()["id"])
    assert record is not None
    target = ServerTarget.from_config(record.assistant().server)
    assert target is not None and target.timeout_seconds == DEFAULT_SERVER_TIMEOUT == 20.0


async def test_webrtc_offer_with_a_null_timeout_is_not_a_500(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = web_app(tmp_path, assistant_file, twilio_auth_token="not-dev-mode")
    async with running_api(app) as api:
        created = await api.a.post("/assistant", json={**ASSISTANT, "server": NULL_TIMEOUT})
        assert created.status_code == 201
        # The assistant resolves (it raised TypeError: a 500); the bad SDP is what is refused.
        response = await offer(
            api.base, "garbage", auth(api.key_a), assistantId=created.json()["id"]
        )
        assert response.status_code == 400, response.text
        assert "bad SDP offer" in message(response)


async def test_an_inbound_call_with_a_null_timeout_runs_and_is_recorded(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    # Port 9 (discard) is closed: the webhooks fail, the call does not.
    server = {"url": "http://127.0.0.1:9/hooks", "timeoutSeconds": None}
    engines = ScriptedEngines(["Hello?"], ["Hi there."], seconds_per_char=0.01)
    app = create_app(settings_for(assistant_file(server=server), tmp_path), engines=engines)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH], max_seconds=20))
        assert report.error is None, report.error
        assert report.record is not None
        assert report.record["ended_reason"] == "customer-ended-call"
        assert len(report.turns) == 1


# --- the media stream's rate ---------------------------------------------------------------------


async def test_a_stream_sending_60_s_of_audio_at_once_is_closed_and_recorded(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = create_app(
        settings_for(assistant_file(), tmp_path, media_burst_seconds=0.5),
        engines=ScriptedEngines([], []),
    )
    async with serve(app) as base:
        url, line = await open_stream(base)
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))
            frame = b"\xff" * 160  # 20 ms of μ-law silence
            try:
                for _ in range(3000):  # 60 s, as fast as the socket takes it
                    await ws.send(line.media(frame, 0.0))
            except websockets.ConnectionClosed:
                pass
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008
            assert "faster than real time" in (ws.close_reason or "")
        record = await dev_record(base, line.call_sid)
        assert record["ended_reason"] == "call.in-progress.error-malformed-media-stream"
        assert "faster than real time" in record["ended_detail"]
        assert "burst allowed: 0.5 s" in record["ended_detail"]  # AVA_MEDIA_BURST_SECONDS
        assert app.state.ava.calls.live == {}


async def test_a_paced_stream_is_not_closed(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """A second of audio sent on Twilio's 20 ms cadence (with the greeting playing) passes."""
    app = create_app(settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], []))
    async with serve(app) as base:
        url, line = await open_stream(base)
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))
            for i in range(50):
                await ws.send(line.media(b"\xff" * 160, i * 0.02))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert ws.close_code is None  # still open: not refused
            await ws.send(line.stop(1.0))
            await _ended(app)
        [record] = app.state.ava.calls.records.values()
        assert (
            record.ended_reason == "customer-ended-call" and record.ended_detail == "stream stopped"
        )


async def _ended(app: FastAPI) -> None:
    for _ in range(250):
        if not app.state.ava.calls.live and app.state.ava.calls.records:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the call did not end")


# --- below the API: the stores and the secret walks ---------------------------------------------


def deep_dict(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return top


async def test_the_tool_store_refuses_deep_config_before_writing(api: Api) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": deep_dict(DEEP)}}
    # 29: a stored tool must still fit inside an assistant's model.tools (3 levels down)
    with pytest.raises(JsonTooComplex, match="nested deeper than 29 levels"):
        await api.stores.tools.create(api.tenant_a, tool)
    with pytest.raises(ValidationError):
        await api.stores.assistants.create(api.tenant_a, {**ASSISTANT, "metadata": deep_dict(DEEP)})
    assert await api.stores.tools.list(api.tenant_a) == []
    assert await api.stores.assistants.list(api.tenant_a) == []


def test_secret_walks_refuse_runaway_depth_instead_of_recursing() -> None:
    box = SecretBox.from_secret("test")
    deep = {"server": {"secret": "s", "x": deep_dict(DEEP)}}
    walks: list[Callable[[], Any]] = [
        lambda: seal_secrets(deep, box),
        lambda: open_secrets(deep, box),
        lambda: without_secrets(deep),
    ]
    for walk in walks:
        with pytest.raises(ValueError, match=f"deeper than {MAX_WALK_DEPTH} levels"):
            walk()
    shallow = {"server": {"secret": "s", "x": deep_dict(MAX_DEPTH)}}
    assert open_secrets(seal_secrets(shallow, box), box) == shallow

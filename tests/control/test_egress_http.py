"""The operator's egress policy and bounded outbound HTTP in the running server (issue 9,
findings 2 and 3): assistant-request to a tenant's server, tool servers' policy from the
settings, and what call records say about a failed request."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks.fakes.server import serve
from control.assistant_request import FAILED_SAY, request_assistant
from control.engines import EngineHub
from control.settings import Settings
from media.twilio.signature import compute_signature
from storage import TwilioCredentials
from tests.conftest import AssistantFactory, ScriptedEngines, migrated_sqlite, settings_for
from tests.control.conftest import AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.webhook_receiver import Answer, receiver
from tests.voice.test_tools_egress import CountingTransport
from voice.assistant import Assistant
from voice.egress import EgressPolicy
from voice.server_messages import ServerTarget, envelope
from voice.types import EndedReason

pytestmark = pytest.mark.timeout(60)

OPERATOR_TOKEN = "operator-twilio-token"  # set: production mode
TRANSIENT = {"name": "Night shift", "model": {"provider": "local"}}
MB = 1024 * 1024
CHUNK = 64 * 1024


async def add_number(api: Api, server: dict[str, Any]) -> None:
    """The tenant's number, stored as an import that proved ownership would store it."""
    await api.stores.phone_numbers.create(
        api.tenant_a,
        number=NUMBER["number"],
        credentials=TwilioCredentials(NUMBER["twilioAccountSid"], auth_token=AUTH_TOKEN),
        server=server,
    )


async def voice_webhook(api: Api) -> httpx.Response:
    url = f"{api.base}/twilio/voice"
    form = {"CallSid": "CA" + "5" * 32, "From": "+15550001111", "To": NUMBER["number"]}
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
    async with httpx.AsyncClient(timeout=15) as http:  # the server may take its 7.5 s budget
        return await http.post(url, data=form, headers=headers)


async def the_call(api: Api) -> dict[str, Any]:
    (call,) = (await api.a.get("/call")).json()
    return dict(call)


AppFactory = Callable[..., Any]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: nothing here depends on the database backend."""
    return migrated_sqlite(tmp_path / "db")


@pytest.fixture
def app_for(tmp_path: Path, assistant_file: AssistantFactory, database_url: str) -> AppFactory:
    def build(**settings: Any) -> Any:
        engines = ScriptedEngines(["Hello?"], ["Hi."], seconds_per_char=0.01)
        return api_app(tmp_path, assistant_file, database_url, engines, **settings)

    return build


async def test_a_loopback_assistant_request_server_is_refused_in_production(
    app_for: AppFactory,
) -> None:
    async with receiver() as hooks, running_api(app_for(twilio_auth_token=OPERATOR_TOKEN)) as api:
        hooks.answers["assistant-request"] = Answer.json({"assistant": TRANSIENT})
        await add_number(api, hooks.server())
        response = await voice_webhook(api)
        assert response.status_code == 200
        assert FAILED_SAY in response.text and "<Stream" not in response.text
        assert hooks.received == []  # never connected to
        call = await the_call(api)
    assert call["endedReason"] == "assistant-request-failed"
    # a fixed kind only: nothing that tells one internal port from another
    assert call["endedMessage"] == "the request failed: egress-denied"
    assert hooks.url.rsplit(":", 1)[1].split("/")[0] not in json.dumps(call)


async def test_the_allow_list_lets_the_assistant_request_through(app_for: AppFactory) -> None:
    app = app_for(twilio_auth_token=OPERATOR_TOKEN, egress_allow="127.0.0.1")
    async with receiver() as hooks, running_api(app) as api:
        hooks.answers["assistant-request"] = Answer.json({"assistant": TRANSIENT})
        await add_number(api, hooks.server())
        response = await voice_webhook(api)
        assert "<Stream" in response.text
        assert len(hooks.messages("assistant-request")) == 1


async def test_a_metadata_address_is_refused_even_in_dev_mode(app_for: AppFactory) -> None:
    async with running_api(app_for(assistant_request_timeout_seconds=5)) as api:
        await add_number(api, {"url": "http://169.254.169.254/latest/meta-data/"})
        started = time.perf_counter()
        response = await voice_webhook(api)
        assert time.perf_counter() - started < 2  # refused, not waited out
        assert FAILED_SAY in response.text
        call = await the_call(api)
    assert call["endedMessage"] == "the request failed: egress-denied"


async def test_an_internal_servers_error_text_never_reaches_the_record(
    app_for: AppFactory,
) -> None:
    async with receiver() as hooks, running_api(app_for()) as api:  # dev mode: loopback allowed
        leak = "redis at 10.0.0.5:6379 said -NOAUTH "
        hooks.answers["assistant-request"] = Answer.json({"error": leak + "x" * 2000})
        await add_number(api, hooks.server())
        await voice_webhook(api)
        call = await the_call(api)
    assert call["endedReason"] == "assistant-request-returned-unspeakable-error"
    assert "10.0.0.5" not in json.dumps(call)


async def test_an_assistant_request_within_vapis_budget_but_past_five_seconds(
    app_for: AppFactory,
) -> None:
    """Vapi's 7.5 s budget applies end to end: a server answering after 5.5 s is used (a fixed
    5 s client timeout used to fail it)."""
    async with receiver() as hooks, running_api(app_for()) as api:
        assert api.app.state.ava.settings.assistant_request_timeout_seconds == 7.5
        hooks.answers["assistant-request"] = Answer.json({"assistant": TRANSIENT}, delay=5.5)
        await add_number(api, hooks.server())
        response = await voice_webhook(api)
    assert "<Stream" in response.text, response.text


async def test_a_huge_assistant_request_answer_is_cut_at_the_cap() -> None:
    async def huge(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(8 * MB // CHUNK):
                yield b" " * CHUNK

        return StreamingResponse(body(), media_type="application/json")

    counting = CountingTransport()
    async with serve(Starlette(routes=[Route("/", huge, methods=["POST"])])) as base:
        answer = await request_assistant(
            ServerTarget(base + "/"),
            envelope("assistant-request", 0, {"id": "call_1"}),
            seconds=5,
            policy=EgressPolicy("127.0.0.1"),
            max_bytes=MB,
            transport=counting,
        )
    assert answer.reason == EndedReason.ASSISTANT_REQUEST_FAILED
    assert answer.detail == "the request failed: response-too-large"
    assert counting.read <= MB + CHUNK


class _Stub:
    """Stands in for the offline engines EngineHub holds (unused by a `local`/`piper` plan)."""

    window_seconds = 0.03

    def stt(self, **_: Any) -> object:
        return object()

    def tts(self, **_: Any) -> object:
        return object()


def hub_for(settings: Settings) -> EngineHub:
    stub: Any = _Stub()
    return EngineHub(
        executor=stub, vad=stub, turn_detector=None, piper=stub, whisper=stub, settings=settings
    )


@pytest.mark.parametrize(
    ("overrides", "loopback_allowed"),
    [
        ({}, True),  # dev mode: the quick start's local tool servers work
        ({"twilio_auth_token": OPERATOR_TOKEN}, False),
        ({"twilio_auth_token": OPERATOR_TOKEN, "egress_allow": "127.0.0.1"}, True),
    ],
)
def test_the_tool_servers_policy_comes_from_the_settings(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    overrides: dict[str, Any],
    loopback_allowed: bool,
) -> None:
    settings = settings_for(assistant_file(), tmp_path, max_response_bytes=4096, **overrides)
    engines = hub_for(settings).for_assistant(
        Assistant.model_validate(
            {"model": {"provider": "local"}, "transcriber": {"provider": "faster-whisper"}}
        )
    )
    assert engines.max_response_bytes == 4096
    assert engines.egress is not None
    loopback = engines.egress.reason("localhost", ipaddress.ip_address("127.0.0.1"))
    assert (loopback is None) is loopback_allowed

"""JSON logs: every line written during a call carries its id, request lines their request id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from control.app import create_app
from control.logs import (
    ContextThreadPool,
    JsonFormatter,
    bound,
    configure_logging,
    resolve_format,
)
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from voice.testing import ScriptedLlm, tone_ulaw
from voice.types import ChatMessage, LlmDelta

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)
engine_log = logging.getLogger("tests.engine")


class LoggingLlm(ScriptedLlm):
    """Logs from inside the reply task, a task the call's TaskGroup started."""

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        engine_log.info("llm request with %d messages", len(messages))
        async for delta in super().stream(messages):
            yield delta


@contextmanager
def captured(fmt: str = "json") -> Iterator[io.StringIO]:
    """What `ava serve` would write (INFO and up, in `fmt`) during the block."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    configure_logging(fmt, "INFO", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


async def test_every_line_of_a_call_carries_its_call_id(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    with captured() as stream:
        engines = ScriptedEngines(
            ["Tell me about your services.", "Stop, what about the price?"],
            [],
            seconds_per_char=0.03,
        )
        engines.llm = LoggingLlm([LONG_REPLY, "Cleanings are eighty dollars."])
        app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=1.5))
    assert report.error is None, report.error
    assert report.record is not None
    call_id = report.record["id"]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for line in lines:
        assert set(line) >= {"ts", "level", "logger", "msg"}
        assert line["ts"].endswith("+00:00")

    # Lines from the reply tasks (two LLM requests) and from the session itself.
    engine = [line for line in lines if line["logger"] == "tests.engine"]
    assert len(engine) == 2
    session = [line for line in lines if line["logger"] == "ava.call"]
    assert any("barge-in" in line["msg"] for line in session)
    assert any("ended" in line["msg"] for line in session)
    for line in engine + session:
        assert line.get("call_id") == call_id, line
    # Whatever mentions the call, logged by whichever module, is tagged with it.
    for line in lines:
        if call_id in line["msg"]:
            assert line.get("call_id") == call_id, line

    # The webhook's access line carries its request id, not a call id (no call exists yet).
    webhook = [
        line for line in lines if line["logger"] == "ava.http" and "/twilio/voice" in line["msg"]
    ]
    assert len(webhook) == 1
    assert webhook[0]["status"] == 200 and webhook[0]["method"] == "POST"
    assert len(webhook[0]["request_id"]) == 32 and "call_id" not in webhook[0]


async def test_request_lines_carry_request_and_tenant_ids(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    with captured() as stream:
        app = create_app(settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], []))
        async with serve(app) as base:
            stores = app.state.ava.stores
            tenant = (await stores.tenants.create_tenant("Acme")).id
            key = (await stores.tenants.create_api_key(tenant)).plaintext
            async with httpx.AsyncClient(base_url=base) as http:
                response = await http.get(
                    "/assistant",
                    headers={"Authorization": f"Bearer {key}", "X-Request-Id": "trace-42"},
                )
    assert response.status_code == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "ava.http"]
    assert len(access) == 1
    assert access[0]["request_id"] == "trace-42"
    assert access[0]["tenant_id"] == tenant
    assert access[0]["path"] == "/assistant" and access[0]["status"] == 200
    assert access[0]["duration_ms"] >= 0


async def test_ids_reach_tasks_started_inside_the_binding() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.bound")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:

        async def child() -> None:
            await asyncio.sleep(0)
            log.info("from a child task")

        with bound(call_id="call_1", tenant_id="ten_1"):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(child())
            with bound(request_id="req_1"):
                log.info("nested")
        log.info("after")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    child_line, nested, after, failed = (json.loads(x) for x in stream.getvalue().splitlines())
    assert child_line["call_id"] == "call_1" and child_line["tenant_id"] == "ten_1"
    assert nested["request_id"] == "req_1" and nested["call_id"] == "call_1"
    assert "call_id" not in after and "request_id" not in after and "tenant_id" not in after
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc"]


async def test_inference_pool_jobs_log_with_the_submitting_call_id() -> None:
    loop = asyncio.get_running_loop()
    with captured() as stream:
        with ContextThreadPool(1) as pool:
            with bound(call_id="call_pool"):
                await loop.run_in_executor(pool, logging.getLogger("tests.infer").info, "decoding")
            await loop.run_in_executor(pool, logging.getLogger("tests.infer").info, "idle")
    inside, outside = (json.loads(x) for x in stream.getvalue().splitlines())
    assert inside["call_id"] == "call_pool" and inside["msg"] == "decoding"
    assert "call_id" not in outside


def test_text_format_shows_the_ids_and_auto_picks_by_terminal() -> None:
    with captured("text") as stream, bound(call_id="call_9"):
        logging.getLogger("ava.test").info("hello")
    assert "INFO ava.test [call_id=call_9] hello" in stream.getvalue()

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Tty()) == "json"

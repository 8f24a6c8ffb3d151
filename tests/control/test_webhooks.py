"""The webhook sender against a real receiver on 127.0.0.1: retries, give-ups, overflow,
`serverMessages`, and that emitting never waits for the network."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.fakes.server import serve
from control.webhooks import WebhookSender, running_webhooks
from voice.assistant import Assistant
from voice.events import CallEnded, CallStarted, MessageAdded
from voice.server_messages import verify_signature
from voice.types import EndedReason

pytestmark = pytest.mark.timeout(30)

SECRET = "hook-secret"


@dataclass
class Hooks:
    statuses: list[int]  # answered in turn; the last one repeats
    delay: float = 0.0
    received: list[tuple[dict[str, Any], bool, float]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        signed = verify_signature(body, request.headers, SECRET, now=time.time())
        self.received.append((json.loads(body)["message"], signed, time.perf_counter()))
        await asyncio.sleep(self.delay)
        status = self.statuses[min(len(self.received), len(self.statuses)) - 1]
        return Response("", status_code=status)

    def kinds(self) -> list[str]:
        return [m["type"] for m, _, _ in self.received]


@asynccontextmanager
async def hooks(statuses: list[int], delay: float = 0.0) -> AsyncIterator[tuple[Hooks, str]]:
    receiver = Hooks(statuses, delay)
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    async with serve(app) as base:
        yield receiver, f"{base}/hook"


def assistant(url: str, **extra: Any) -> Assistant:
    return Assistant.model_validate(
        {"server": {"url": url, "secret": SECRET, "timeoutSeconds": 1}, **extra}
    )


def a_call(sender: WebhookSender, call_id: str = "call_1") -> None:
    sender.emit(CallStarted(call_id, 0.0, time.time(), "twilio", "Ava", {"call_sid": "CA1"}))
    sender.emit(MessageAdded(call_id, 1.0, "user", "Hi"))
    sender.emit(MessageAdded(call_id, 2.0, "bot", "Hello!", 0.8))
    summary = {"messages": [], "usage": {"promptTokens": 5, "completionTokens": 2}}
    sender.emit(CallEnded(call_id, 3.0, EndedReason.CUSTOMER_ENDED_CALL, "", summary))


async def flushed(sender: WebhookSender, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        await sender.flush()


async def test_a_call_sends_status_updates_and_the_report_signed() -> None:
    async with hooks([200]) as (receiver, url), running_webhooks() as sender:
        sender.register("call_1", assistant(url))
        a_call(sender)
        await flushed(sender)
    # two workers: the order of arrival is not fixed
    assert sorted(receiver.kinds()) == ["end-of-call-report", "status-update", "status-update"]
    assert all(signed for _, signed, _ in receiver.received)
    report = next(m for m, _, _ in receiver.received if m["type"] == "end-of-call-report")
    assert report["call"]["phoneCallProviderId"] == "CA1"
    assert [(m["role"], m["message"]) for m in report["messages"]] == [
        ("user", "Hi"),
        ("bot", "Hello!"),
    ]
    assert report["messages"][1]["duration"] == 800
    assert report["transcript"] == "User: Hi\nAI: Hello!"
    assert report["durationSeconds"] == 3.0 and report["endedReason"] == "customer-ended-call"
    assert sender.delivered == 3 and sender.failed == 0


async def test_5xx_and_timeouts_are_retried_with_backoff_4xx_is_final() -> None:
    sender = WebhookSender(workers=1, backoff_seconds=0.2, max_attempts=3)
    async with hooks([503, 200]) as (retried, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["end-of-call-report"]))
        a_call(sender)
        await flushed(sender)
    (first, _, t1), (second, _, t2) = retried.received
    assert first == second and t2 - t1 >= 0.2  # the same message, after the backoff
    assert sender.delivered == 1

    sender = WebhookSender(workers=1, backoff_seconds=0.05, max_attempts=3)
    async with hooks([200], delay=2.0) as (slow, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["end-of-call-report"]))
        a_call(sender)
        await flushed(sender)
    assert len(slow.received) == 3 and sender.failed == 1  # 1 s timeout, three attempts

    sender = WebhookSender(workers=1, backoff_seconds=0.05, max_attempts=3)
    async with hooks([401]) as (refused, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["end-of-call-report"]))
        a_call(sender)
        await flushed(sender)
    assert len(refused.received) == 1 and sender.failed == 1


async def test_server_messages_choose_what_is_sent_and_unregistered_calls_send_nothing() -> None:
    async with hooks([200]) as (receiver, url), running_webhooks() as sender:
        sender.register("call_1", assistant(url, serverMessages=["status-update"]))
        a_call(sender)
        a_call(sender, "call_2")  # never registered
        sender.register("call_3", Assistant())  # no server
        a_call(sender, "call_3")
        await flushed(sender)
    assert receiver.kinds() == ["status-update", "status-update"]
    assert {m["call"]["id"] for m, _, _ in receiver.received} == {"call_1"}


async def test_emitting_never_waits_and_a_full_queue_drops() -> None:
    sender = WebhookSender(queue_size=2, workers=1)
    async with hooks([200], delay=0.5) as (receiver, url), running_webhooks(sender):
        sender.register("call_1", assistant(url))
        started = time.perf_counter()
        a_call(sender)  # three messages onto a queue of two, a receiver taking 0.5 s each
        elapsed = time.perf_counter() - started
        await flushed(sender)
    assert elapsed < 0.05
    assert sender.dropped >= 1 and sender.delivered + sender.dropped == 3
    assert len(receiver.received) == sender.delivered


async def test_an_unreachable_receiver_gives_up_without_raising() -> None:
    async with hooks([200]) as (_, url):
        pass  # closed: connection refused
    sender = WebhookSender(backoff_seconds=0.01, max_attempts=2)
    clock: Callable[[], float] = time.perf_counter
    started = clock()
    async with running_webhooks(sender):
        sender.register("call_1", assistant(url))
        a_call(sender)
        await flushed(sender)
    assert sender.failed == 3 and sender.delivered == 0 and clock() - started < 5

"""The webhook sender against a real receiver on 127.0.0.1: retries, give-ups, overflow,
`serverMessages`, and that emitting never waits for the network. (Tenant isolation, restarts,
the breaker and the delivery log: test_webhook_delivery.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.fakes.server import serve
from control.webhooks import WebhookSender, running_webhooks
from storage import DeliveryStore, SecretBox, make_engine, make_sessionmaker
from tests.conftest import migrated_sqlite
from tests.control.webhook_receiver import sdk_parse
from voice.assistant import Assistant
from voice.call_messages import FINAL_TRANSCRIPTS
from voice.egress import EgressPolicy
from voice.events import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    BargeIn,
    CallEnded,
    CallStarted,
    MessageAdded,
    SpeechStarted,
    SpeechStopped,
    TranscriptReceived,
)
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


@pytest.fixture
async def deliveries(tmp_path: Path) -> AsyncIterator[DeliveryStore]:
    engine = make_engine(migrated_sqlite(tmp_path / "db"))
    yield DeliveryStore(make_sessionmaker(engine), SecretBox.from_secret("webhook-tests-key"))
    await engine.dispose()


def new_sender(deliveries: DeliveryStore, **options: Any) -> WebhookSender:
    """A sender that may reach the receivers on 127.0.0.1 (as in dev mode)."""
    return WebhookSender(deliveries, policy=EgressPolicy(allow_loopback=True), **options)


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


async def test_a_call_sends_status_updates_and_the_report_signed(deliveries: DeliveryStore) -> None:
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register("call_1", assistant(url))
        a_call(sender)
        await flushed(sender)
    # one call's messages arrive in the order they happened, even with two workers
    assert receiver.kinds() == [
        "status-update",
        "conversation-update",
        "conversation-update",
        "status-update",
        "end-of-call-report",
    ]
    assert all(signed for _, signed, _ in receiver.received)
    update = receiver.received[2][0]
    assert [(m["role"], m["message"]) for m in update["messages"]] == [
        ("user", "Hi"),
        ("bot", "Hello!"),
    ]
    assert update["messagesOpenAIFormatted"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    report = next(m for m, _, _ in receiver.received if m["type"] == "end-of-call-report")
    assert report["call"]["phoneCallProviderId"] == "CA1"
    assert [(m["role"], m["message"]) for m in report["messages"]] == [
        ("user", "Hi"),
        ("bot", "Hello!"),
    ]
    assert report["messages"][1]["duration"] == 800
    assert report["transcript"] == "User: Hi\nAI: Hello!"
    assert report["durationSeconds"] == 3.0 and report["endedReason"] == "customer-ended-call"
    assert report["call"]["status"] == "ended" and "status" not in report
    assert sender.delivered == 5 and sender.failed == 0


async def test_5xx_and_timeouts_are_retried_with_backoff_4xx_is_final(
    deliveries: DeliveryStore,
) -> None:
    sender = new_sender(deliveries, backoff_seconds=0.2, max_attempts=3)
    async with hooks([503, 200]) as (retried, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["end-of-call-report"]))
        a_call(sender)
        await flushed(sender)
    (first, _, t1), (second, _, t2) = retried.received
    assert first == second and t2 - t1 >= 0.1  # the same message, after the backoff (jittered)
    assert sender.delivered == 1

    sender = new_sender(deliveries, backoff_seconds=0.05, max_attempts=3)
    async with hooks([200], delay=2.0) as (slow, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["end-of-call-report"]))
        a_call(sender)
        await flushed(sender)
    assert len(slow.received) == 3 and sender.failed == 1  # 1 s timeout, three attempts

    sender = new_sender(deliveries, backoff_seconds=0.05, max_attempts=3)
    async with hooks([401]) as (refused, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["end-of-call-report"]))
        a_call(sender)
        await flushed(sender)
    assert len(refused.received) == 1 and sender.failed == 1


async def test_server_messages_choose_what_is_sent_and_unregistered_calls_send_nothing(
    deliveries: DeliveryStore,
) -> None:
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register("call_1", assistant(url, serverMessages=["status-update"]))
        a_call(sender)
        a_call(sender, "call_2")  # never registered
        sender.register("call_3", Assistant())  # no server
        a_call(sender, "call_3")
        await flushed(sender)
    assert receiver.kinds() == ["status-update", "status-update"]
    assert {m["call"]["id"] for m, _, _ in receiver.received} == {"call_1"}


async def test_emitting_never_waits_and_a_full_buffer_keeps_status_and_report(
    deliveries: DeliveryStore,
) -> None:
    sender = new_sender(deliveries, buffer_size=2)
    async with hooks([200], delay=0.5) as (receiver, url), running_webhooks(sender):
        sender.register("call_1", assistant(url))
        started = time.perf_counter()
        a_call(sender)  # five messages into a buffer of two, a receiver taking 0.5 s each
        elapsed = time.perf_counter() - started
        await flushed(sender)
    assert elapsed < 0.05
    # past the bound only the progress message is dropped; status and report never are
    assert sender.dropped == 1 and sender.delivered == 4
    assert receiver.kinds() == [
        "status-update", "conversation-update", "status-update", "end-of-call-report"
    ]  # fmt: skip


async def test_an_unreachable_receiver_gives_up_without_raising(deliveries: DeliveryStore) -> None:
    async with hooks([200]) as (_, url):
        pass  # closed: connection refused
    # breaker_failures past the 10 failures: this is about giving up, not postponing
    sender = new_sender(deliveries, backoff_seconds=0.01, max_attempts=2, breaker_failures=20)
    clock: Callable[[], float] = time.perf_counter
    started = clock()
    async with running_webhooks(sender):
        sender.register("call_1", assistant(url))
        a_call(sender)
        await flushed(sender)
    assert sender.failed == 5 and sender.delivered == 0 and clock() - started < 5


async def test_live_messages_in_order_with_vapis_shapes(deliveries: DeliveryStore) -> None:
    wanted = ["status-update", "speech-update", "transcript", "conversation-update",
              "user-interrupted", "end-of-call-report"]  # fmt: skip
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register("call_1", assistant(url, serverMessages=wanted))
        t = time.time()
        sender.emit(CallStarted("call_1", 0.0, t, "twilio", "Ava", {"call_sid": "CA1"}))
        sender.emit(AssistantSpeechStarted("call_1", 0.1))
        sender.emit(AssistantSpeechStopped("call_1", 0.9))
        sender.emit(MessageAdded("call_1", 0.9, "bot", "Hello!", 0.8))
        sender.emit(SpeechStarted("call_1", 1.0))
        sender.emit(TranscriptReceived("call_1", 1.2, "Hi", False))
        sender.emit(TranscriptReceived("call_1", 1.5, "Hi there", True))
        sender.emit(SpeechStopped("call_1", 1.6))
        sender.emit(MessageAdded("call_1", 1.7, "user", "Hi there"))
        sender.emit(AssistantSpeechStarted("call_1", 2.0))
        sender.emit(SpeechStarted("call_1", 2.3))
        sender.emit(AssistantSpeechStopped("call_1", 2.5))
        sender.emit(BargeIn("call_1", 2.5, 2.3, "How"))
        sender.emit(CallEnded("call_1", 3.0, EndedReason.CUSTOMER_ENDED_CALL))
        await flushed(sender)
    got = [
        (m["type"], m.get("status") or m.get("transcriptType") or "", m.get("role", ""))
        for m, _, _ in receiver.received
    ]
    assert got == [
        ("status-update", "in-progress", ""),
        ("speech-update", "started", "assistant"),
        ("speech-update", "stopped", "assistant"),
        ("transcript", "final", "assistant"),
        ("conversation-update", "", ""),
        ("speech-update", "started", "user"),
        ("transcript", "partial", "user"),
        ("transcript", "final", "user"),
        ("speech-update", "stopped", "user"),
        ("conversation-update", "", ""),
        ("speech-update", "started", "assistant"),
        ("speech-update", "started", "user"),
        ("speech-update", "stopped", "assistant"),
        ("user-interrupted", "", ""),
        ("status-update", "ended", ""),
        ("end-of-call-report", "", ""),
    ]
    assert all(signed for _, signed, _ in receiver.received)
    messages = [m for m, _, _ in receiver.received]
    turns = [(m["role"], m["status"], m["turn"]) for m in messages if m["type"] == "speech-update"]
    assert turns == [
        ("assistant", "started", 0), ("assistant", "stopped", 0), ("user", "started", 0),
        ("user", "stopped", 0), ("assistant", "started", 1), ("user", "started", 1),
        ("assistant", "stopped", 1),
    ]  # fmt: skip
    assert messages[7]["transcript"] == "Hi there" and messages[3]["transcript"] == "Hello!"
    assert [m["call"]["status"] for m in messages[:-2]] == ["in-progress"] * 14
    assert messages[-1]["call"]["status"] == "ended"


async def test_final_transcripts_only_when_asked_so(deliveries: DeliveryStore) -> None:
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register("call_1", assistant(url, serverMessages=[FINAL_TRANSCRIPTS]))
        sender.emit(CallStarted("call_1", 0.0, time.time(), "twilio", "Ava", {}))
        sender.emit(TranscriptReceived("call_1", 1.2, "Hi", False))
        sender.emit(TranscriptReceived("call_1", 1.5, "Hi there", True))
        sender.emit(CallEnded("call_1", 3.0, EndedReason.CUSTOMER_ENDED_CALL))
        await flushed(sender)
    assert [(m["type"], m["transcript"]) for m, _, _ in receiver.received] == [
        ("transcript", "Hi there")
    ]


async def test_default_server_messages_leave_transcripts_out(deliveries: DeliveryStore) -> None:
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register("call_1", assistant(url))  # Vapi's default list
        sender.emit(CallStarted("call_1", 0.0, time.time(), "twilio", "Ava", {}))
        sender.emit(TranscriptReceived("call_1", 1.5, "Hi there", True))
        sender.emit(SpeechStarted("call_1", 1.0))
        await flushed(sender)
    assert receiver.kinds() == ["status-update", "speech-update"]


async def test_hang_when_the_assistant_stalls_once_per_turn(deliveries: DeliveryStore) -> None:
    sender = new_sender(deliveries, hang_seconds=0.2)
    async with hooks([200]) as (receiver, url), running_webhooks(sender):
        sender.register("call_1", assistant(url, serverMessages=["hang"]))
        sender.emit(CallStarted("call_1", 0.0, time.time(), "twilio", "Ava", {}))
        sender.emit(MessageAdded("call_1", 1.0, "user", "Hello?"))
        await asyncio.sleep(0.6)  # three hang periods: still one hang for the turn
        sender.emit(AssistantSpeechStarted("call_1", 1.7))
        sender.emit(MessageAdded("call_1", 2.0, "user", "And?"))
        sender.emit(AssistantSpeechStarted("call_1", 2.1))  # answered in time: no hang
        await asyncio.sleep(0.4)
        sender.emit(MessageAdded("call_1", 3.0, "user", "Hello again?"))
        sender.emit(CallEnded("call_1", 3.1, EndedReason.CUSTOMER_ENDED_CALL))
        await asyncio.sleep(0.4)  # the call is over: its timer is gone
        await flushed(sender)
    assert receiver.kinds() == ["hang"]
    assert sdk_parse(receiver.received[0][0]).call.id == "call_1"


async def test_a_transfer_sends_forwarding_before_ended(deliveries: DeliveryStore) -> None:
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register("call_1", assistant(url, serverMessages=["status-update"]))
        sender.emit(CallStarted("call_1", 0.0, time.time(), "twilio", "Ava", {}))
        sender.emit(MessageAdded("call_1", 1.0, "user", "Put me through"))
        sender.emit(
            CallEnded(
                "call_1", 3.0, EndedReason.ASSISTANT_FORWARDED_CALL, "transferred to +15557770000"
            )
        )
        await flushed(sender)
    statuses = [m["status"] for m, _, _ in receiver.received]
    assert statuses == ["in-progress", "forwarding", "ended"]
    forwarding = receiver.received[1][0]
    assert forwarding["destination"] == {"type": "number", "number": "+15557770000"}
    assert forwarding["transcript"] == "User: Put me through"
    assert forwarding["call"]["status"] == "forwarding"
    assert receiver.received[2][0]["endedReason"] == "assistant-forwarded-call"
    assert sdk_parse(forwarding).destination.number == "+15557770000"


async def test_the_phone_numbers_server_when_the_assistant_has_none(
    deliveries: DeliveryStore,
) -> None:
    async with hooks([200]) as (receiver, url), running_webhooks(new_sender(deliveries)) as sender:
        sender.register(
            "call_1", Assistant(serverMessages=["status-update"]), {"url": url, "secret": SECRET}
        )
        sender.register("call_2", assistant(url, serverMessages=["status-update"]), {"url": "x"})
        a_call(sender)
        a_call(sender, "call_2")
        await flushed(sender)
    # each call's in order; the two calls are delivered side by side
    assert (
        sorted(m["call"]["id"] for m, _, _ in receiver.received) == ["call_1"] * 2 + ["call_2"] * 2
    )
    assert all(signed for _, signed, _ in receiver.received)

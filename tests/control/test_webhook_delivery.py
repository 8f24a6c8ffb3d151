"""Webhook delivery that isolates tenants (issue 9, finding 4): a dead endpoint of one tenant
delays no other tenant's messages and loses none; deliveries survive a restart (and a crash);
the per-destination breaker postpones without dropping; retries back off with jitter up to
`webhook_max_attempts`; the per-tenant delivery log and replay in the API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.fakes.server import serve
from control.webhooks import WebhookSender, running_webhooks
from storage import DeliveryStore, SecretBox, TenantStore, make_engine, make_sessionmaker
from storage.tables import WebhookDeliveryRow
from tests.conftest import AssistantFactory
from tests.control.conftest import api_app, running_api
from voice.assistant import Assistant
from voice.egress import EgressPolicy
from voice.events import CallEnded, CallStarted, MessageAdded, TranscriptReceived
from voice.types import EndedReason

pytestmark = pytest.mark.timeout(60)

SECRET = "delivery-hook-secret"
HEADER_VALUE = "Bearer tenant-header-credential"
BOX = SecretBox.from_secret("delivery-tests-secret-key")
LOOPBACK = EgressPolicy(allow_loopback=True)
A_CALL = ["status-update", "conversation-update", "conversation-update", "status-update",
          "end-of-call-report"]  # fmt: skip


@dataclass
class Hooks:
    """A tenant's webhook server on 127.0.0.1: answers `status` (changeable), or never answers
    while `hanging` (until the test ends)."""

    url: str = ""
    status: int = 200
    hanging: bool = False
    # (message, perf_counter at arrival, status answered); a hung request has status 0
    received: list[tuple[dict[str, Any], float, int]] = field(default_factory=list)
    _end: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        message = json.loads(await request.body())["message"]
        self._arrived.set()
        if self.hanging:
            self.received.append((message, time.perf_counter(), 0))
            await self._end.wait()
            return Response(status_code=503)
        self.received.append((message, time.perf_counter(), self.status))
        return Response("ignored body", status_code=self.status)

    def answered(self, status: int = 200) -> list[dict[str, Any]]:
        return [m for m, _, s in self.received if s == status]

    async def wait_for(self, check: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while not check():
                self._arrived.clear()
                await self._arrived.wait()


@asynccontextmanager
async def hooks() -> AsyncIterator[Hooks]:
    receiver = Hooks()
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    async with serve(app) as base:
        receiver.url = f"{base}/hook"
        try:
            yield receiver
        finally:
            receiver._end.set()


@dataclass
class Db:
    deliveries: DeliveryStore
    tenants: TenantStore

    async def rows(self, **where: Any) -> list[WebhookDeliveryRow]:
        async with self.deliveries._sessions() as session:
            query = select(WebhookDeliveryRow).filter_by(**where)
            return list((await session.scalars(query.order_by(WebhookDeliveryRow.seq))).all())


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Db]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        yield Db(DeliveryStore(sessions, BOX), TenantStore(sessions, secret_key="k"))
    finally:
        await engine.dispose()


def sender_for(db: Db, **options: Any) -> WebhookSender:
    return WebhookSender(db.deliveries, policy=LOOPBACK, **options)


def assistant(url: str, **extra: Any) -> Assistant:
    server = {"url": url, "secret": SECRET, "headers": {"authorization": HEADER_VALUE}}
    return Assistant.model_validate({"server": server | extra.pop("server", {}), **extra})


def a_call(sender: WebhookSender, call_id: str, tenant_id: str | None) -> None:
    metadata = {"tenant_id": tenant_id} if tenant_id else {}
    sender.emit(CallStarted(call_id, 0.0, time.time(), "twilio", "Ava", metadata))
    sender.emit(MessageAdded(call_id, 1.0, "user", "Hi"))
    sender.emit(MessageAdded(call_id, 2.0, "bot", "Hello!", 0.8))
    sender.emit(CallEnded(call_id, 3.0, EndedReason.CUSTOMER_ENDED_CALL))


async def test_a_dead_endpoint_of_one_tenant_neither_delays_nor_drops_anyone(
    tmp_path: Path, database_url: str
) -> None:
    async with database(database_url) as db, hooks() as good, hooks() as dead:
        tenant_a = (await db.tenants.create_tenant("A")).id
        tenant_b = (await db.tenants.create_tenant("B")).id
        dead.hanging = True  # accepts, never answers: within B's default 20 s timeoutSeconds
        sender = sender_for(db)
        b_wants = ["status-update", "conversation-update", "transcript", "end-of-call-report"]
        async with running_webhooks(sender, grace_seconds=0.1):
            for i in range(20):  # B's calls all end while its server is dead...
                sender.register(f"b{i}", assistant(dead.url, serverMessages=b_wants))
                a_call(sender, f"b{i}", tenant_b)
            # ...and one of them floods it: more than the old shared queues held in all
            sender.register("b-flood", assistant(dead.url, serverMessages=b_wants))
            sender.emit(CallStarted("b-flood", 0.0, time.time(), "twilio", "Ava",
                                    {"tenant_id": tenant_b}))  # fmt: skip
            for n in range(1200):
                sender.emit(TranscriptReceived("b-flood", n / 100, f"word {n}", False))
            # A's calls, meanwhile: every message must arrive within about a second
            emitted: dict[str, float] = {}
            for j in range(3):
                sender.register(f"a{j}", assistant(good.url))
                emitted[f"a{j}"] = time.perf_counter()
                a_call(sender, f"a{j}", tenant_a)
                await asyncio.sleep(0.2)
            await good.wait_for(lambda: len(good.answered()) == 15)
            await sender.persisted()
            b_rows = await db.rows(tenant_id=tenant_b)
            a_rows = await db.rows(tenant_id=tenant_a)
            hung = len(dead.received)
        # shut down with B's requests still hanging: they stay pending for the next start
        after = await db.rows(tenant_id=tenant_b)

    lateness = [at - emitted[m["call"]["id"]] for m, at, _ in good.received]
    assert max(lateness) < 1.0, lateness
    for j in range(3):
        assert [m["type"] for m in good.answered() if m["call"]["id"] == f"a{j}"] == A_CALL
    # nothing dropped: every message of B's is in the outbox, pending
    assert sender.dropped == 0
    assert len(b_rows) == 20 * 6 + 1 + 1200  # 6 a call: a bot transcript too
    assert {r.status for r in after} == {"pending"}
    assert len(a_rows) == 15
    # a destination that never answers holds a few requests, not the sender
    assert 1 <= hung <= sender.per_destination


async def test_pending_deliveries_are_sent_after_a_restart(
    tmp_path: Path, database_url: str
) -> None:
    async with database(database_url) as db, hooks() as receiver:
        tenant = (await db.tenants.create_tenant("A")).id
        receiver.status = 503  # down
        first = sender_for(db, backoff_seconds=0.5, max_attempts=10)
        async with running_webhooks(first, grace_seconds=0.1):
            first.register("call_1", assistant(receiver.url))
            a_call(first, "call_1", tenant)
            await receiver.wait_for(lambda: len(receiver.received) >= 1)
        rows = await db.rows()
        assert [r.status for r in rows] == ["pending"] * 5
        assert rows[0].attempts >= 1 and rows[0].last_error_kind == "http-503"
        assert {r.lease_owner for r in rows} == {None}  # released at the stop

        receiver.status = 200  # up again; a new process on the same database
        second = sender_for(db, backoff_seconds=0.5, max_attempts=10)
        async with running_webhooks(second):
            await receiver.wait_for(lambda: len(receiver.answered()) == 5)
            await second.flush()
        assert [m["type"] for m in receiver.answered()] == A_CALL  # in order
        rows = await db.rows()
        assert {r.status for r in rows} == {"delivered"}


async def test_deliveries_in_flight_when_the_process_died_are_sent_by_the_next(
    tmp_path: Path, database_url: str
) -> None:
    async with database(database_url) as db, hooks() as receiver:
        receiver.hanging = True
        crashed = sender_for(db, lease_seconds=0.5)
        task = asyncio.create_task(crashed.run())
        crashed.register("call_1", assistant(receiver.url))
        a_call(crashed, "call_1", None)  # single-tenant: no tenant id
        await receiver.wait_for(lambda: len(receiver.received) == 1)  # the head is in flight
        task.cancel()  # no flush, no release: its leases must lapse
        with pytest.raises(asyncio.CancelledError):
            await task
        receiver.hanging = False
        started = time.perf_counter()
        after = sender_for(db, lease_seconds=0.5, poll_seconds=0.1)
        async with running_webhooks(after):
            await receiver.wait_for(lambda: len(receiver.answered()) == 5)
        assert time.perf_counter() - started >= 0.3  # not before the dead one's lease lapsed
        assert [m["type"] for m in receiver.answered()] == A_CALL
        assert {r.status for r in await db.rows()} == {"delivered"}


async def test_the_breaker_postpones_a_failing_destination_then_lets_it_recover(
    tmp_path: Path, database_url: str
) -> None:
    async with database(database_url) as db, hooks() as receiver:
        receiver.status = 503
        sender = sender_for(
            db, breaker_failures=3, breaker_seconds=0.8, backoff_seconds=0.01, max_attempts=20
        )
        async with running_webhooks(sender):
            sender.register("call_1", assistant(receiver.url))
            a_call(sender, "call_1", None)
            await receiver.wait_for(lambda: len(receiver.received) == 3)
            await asyncio.sleep(0.5)
            assert len(receiver.received) == 3  # open: nothing attempted
            assert {r.status for r in await db.rows()} == {"pending"}  # and nothing dropped
            receiver.status = 200
            await receiver.wait_for(lambda: len(receiver.answered()) == 5)
            await sender.flush()
        gap = receiver.received[3][1] - receiver.received[2][1]
        assert gap >= 0.7  # the trial came after the cool-down
        rows = await db.rows()
        assert [m["type"] for m in receiver.answered()] == A_CALL
        assert [r.attempts for r in rows] == [4, 1, 1, 1, 1]  # postponed ones used no attempt
        assert {r.status for r in rows} == {"delivered"}


async def test_retries_back_off_with_jitter_and_stop_at_max_attempts(
    tmp_path: Path, database_url: str
) -> None:
    async with database(database_url) as db, hooks() as receiver:
        receiver.status = 503
        sender = sender_for(db, backoff_seconds=0.1, max_attempts=3, breaker_failures=100)
        delays = [sender.backoff(3) for _ in range(20)]
        assert all(0.2 <= d <= 0.4 for d in delays) and len(set(delays)) > 1
        async with running_webhooks(sender):
            for call_id in ("call_1", "call_2"):
                sender.register(call_id, assistant(receiver.url, serverMessages=["status-update"]))
                sender.emit(CallStarted(call_id, 0.0, time.time(), "twilio", "Ava", {}))
            await receiver.wait_for(lambda: len(receiver.received) == 2)
            await asyncio.sleep(0.02)
            first = {r.call_id: r.next_attempt_at for r in await db.rows()}
            await sender.flush()
        assert first["call_1"] != first["call_2"]
        rows = await db.rows()
        assert [(r.status, r.attempts, r.last_error_kind, r.last_status_code) for r in rows] == [
            ("failed", 3, "http-503", 503)
        ] * 2
        assert len(receiver.received) == 6
        # a final answer is not retried; a refused destination is recorded by a fixed kind
        receiver.status = 404
        strict = WebhookSender(db.deliveries, max_attempts=3)  # the default policy: no loopback
        async with running_webhooks(strict):
            strict.register("call_3", assistant(receiver.url, serverMessages=["status-update"]))
            strict.emit(CallStarted("call_3", 0.0, time.time(), "twilio", "Ava", {}))
            await strict.flush()
        (refused,) = await db.rows(call_id="call_3")
        assert (refused.status, refused.attempts, refused.last_error_kind) == (
            "failed", 1, "egress-denied"
        )  # fmt: skip
        assert len(receiver.received) == 6
        # a header httpx cannot encode fails that delivery, not the sender
        odd = sender_for(db)
        async with running_webhooks(odd):
            server = {"headers": {"x-note": "\u2603"}}
            odd.register("call_4", assistant(receiver.url, server=server))
            odd.register("call_5", assistant(receiver.url, serverMessages=["status-update"]))
            for call_id in ("call_4", "call_5"):
                odd.emit(CallStarted(call_id, 0.0, time.time(), "twilio", "Ava", {}))
            await odd.flush()
        (bad,) = await db.rows(call_id="call_4")
        assert (bad.status, bad.attempts, bad.last_error_kind) == ("failed", 1, "request-failed")
        (good,) = await db.rows(call_id="call_5")
        assert (good.status, good.last_status_code) == ("failed", 404)


async def test_targets_are_sealed_and_claims_never_overlap(database_url: str) -> None:
    async with database(database_url) as db, hooks() as receiver:
        sender = sender_for(db)
        sender.register("call_1", assistant(receiver.url))
        # not running: the messages are only buffered; write them as nobody's
        a_call(sender, "call_1", None)
        rows = [d.new_row() for queue in sender._buffers.values() for d in queue]
        await db.deliveries.add(rows, owner=None, lease_until=None)
        stored = await db.rows()
        assert all(SECRET not in r.target and HEADER_VALUE not in r.target for r in stored)
        now = datetime.now(UTC)
        until = now + timedelta(seconds=30)
        one, two = await asyncio.gather(
            db.deliveries.claim("one", now=now, lease_until=until, limit=3),
            db.deliveries.claim("two", now=now, lease_until=until, limit=3),
        )
        ids_one, ids_two = {c.id for c in one}, {c.id for c in two}
        assert not ids_one & ids_two and len(ids_one | ids_two) == 5
        assert {c.target["secret"] for c in [*one, *two]} == {SECRET}  # opened for sending
        assert {c.target["headers"]["authorization"] for c in [*one, *two]} == {HEADER_VALUE}
        assert await db.deliveries.claim("three", now=now, lease_until=until, limit=5) == []


async def test_the_delivery_log_and_replay_per_tenant(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url)
    async with hooks() as receiver, running_api(app) as api:
        sender: WebhookSender = app.state.webhooks
        sender.register("call_a", assistant(receiver.url))
        a_call(sender, "call_a", api.tenant_a)

        async def listed(**params: Any) -> httpx.Response:
            return await api.a.get("/webhook-delivery", params=params)

        async def all_delivered() -> list[dict[str, Any]]:
            async with asyncio.timeout(10):
                while True:
                    items: list[dict[str, Any]] = (await listed()).json()
                    if len(items) == 5 and {i["status"] for i in items} == {"delivered"}:
                        return items
                    await asyncio.sleep(0.05)

        items = await all_delivered()
        assert sorted(i["type"] for i in items) == sorted(A_CALL)
        assert set(items[0]) == {"id", "callId", "type", "url", "status", "attempts",
                                 "lastErrorKind", "lastStatusCode", "createdAt", "updatedAt",
                                 "deliveredAt"}  # fmt: skip
        assert {(i["callId"], i["url"], i["attempts"], i["lastStatusCode"]) for i in items} == {
            ("call_a", receiver.url, 1, 200)
        }
        response = await listed()
        assert SECRET not in response.text and HEADER_VALUE not in response.text
        assert len((await listed(type="end-of-call-report")).json()) == 1
        assert len((await listed(status="delivered", callId="call_a")).json()) == 5
        assert (await listed(status="failed")).json() == []
        assert (await listed(callId="other")).json() == []
        assert (await listed(status="sent")).status_code == 422
        assert (await listed(cursor="garbage")).status_code == 422
        first = await listed(limit=2)
        second = await listed(limit=2, cursor=first.headers["x-next-cursor"])
        third = await listed(limit=2, cursor=second.headers["x-next-cursor"])
        assert "x-next-cursor" not in third.headers
        paged = [i["id"] for r in (first, second, third) for i in r.json()]
        assert sorted(paged) == sorted(i["id"] for i in items)

        report = next(i for i in items if i["type"] == "end-of-call-report")
        # tenant B sees none of it, and cannot replay it
        assert (await api.b.get("/webhook-delivery")).json() == []
        assert (await api.b.get(f"/webhook-delivery/{report['id']}")).status_code == 404
        assert (await api.b.post(f"/webhook-delivery/{report['id']}/replay")).status_code == 404
        assert (await api.a.post("/webhook-delivery/nope/replay")).status_code == 404
        got = await api.a.get(f"/webhook-delivery/{report['id']}")
        assert got.status_code == 200 and got.json()["deliveredAt"] is not None

        replayed = await api.a.post(f"/webhook-delivery/{report['id']}/replay")
        assert replayed.status_code == 200
        assert (replayed.json()["status"], replayed.json()["attempts"]) == ("pending", 0)
        await receiver.wait_for(lambda: len(receiver.answered()) == 6)
        assert receiver.answered()[-1]["type"] == "end-of-call-report"
        async with asyncio.timeout(10):
            while True:
                again = await api.a.get(f"/webhook-delivery/{report['id']}")
                if again.json()["status"] == "delivered":
                    break
                await asyncio.sleep(0.05)
        assert again.json()["attempts"] == 1


async def test_tenants_take_turns_when_requests_are_scarce(database_url: str) -> None:
    async with database(database_url) as db, hooks() as receiver:
        tenant_a = (await db.tenants.create_tenant("A")).id
        tenant_b = (await db.tenants.create_tenant("B")).id
        sender = sender_for(db, max_in_flight=1)  # one request at a time in the process
        async with running_webhooks(sender):
            for i in range(10):
                sender.register(f"b{i}", assistant(receiver.url, serverMessages=["status-update"]))
                sender.emit(CallStarted(f"b{i}", 0.0, time.time(), "twilio", "Ava",
                                        {"tenant_id": tenant_b}))  # fmt: skip
            sender.register("a0", assistant(receiver.url, serverMessages=["status-update"]))
            sender.emit(
                CallStarted("a0", 0.0, time.time(), "twilio", "Ava", {"tenant_id": tenant_a})
            )
            await receiver.wait_for(lambda: len(receiver.answered()) == 11)
        order = [m["call"]["id"] for m in receiver.answered()]
        assert order.index("a0") <= 1, order  # its turn comes next, not after B's ten


async def test_a_deleted_tenants_messages_do_not_block_the_others(database_url: str) -> None:
    async with database(database_url) as db, hooks() as receiver:
        tenant = (await db.tenants.create_tenant("A")).id
        sender = sender_for(db)
        async with running_webhooks(sender):
            sender.register("gone", assistant(receiver.url))
            sender.register("here", assistant(receiver.url))
            a_call(sender, "gone", "no-such-tenant")  # its row cannot reference a tenant
            a_call(sender, "here", tenant)
            await sender.flush()
        assert sender.dropped == 5
        assert [m["call"]["id"] for m in receiver.answered()] == ["here"] * 5

"""Vapi server messages delivered to the call's server, durably, without one tenant's endpoint
holding up anyone else's.

The sink side (the call's event loop turn: never blocks, never awaits, never raises). `emit`
turns the event into messages (`voice.call_messages`, which also applies the assistant's
`serverMessages`) and appends them to an in-memory buffer; a writer task moves the buffer into
the `webhook_deliveries` table (`storage.deliveries`) in batches, and only then are they sent.
Overflow policy: the buffer only waits for the database, never for a receiver (a dead endpoint's
backlog lives in the table), so it fills only if the database stalls. Past `buffer_size`,
`status-update` and `end-of-call-report` are still accepted — at most three per call at its
end, so their memory is bounded by the number of calls — and the other kinds (speech and
transcript updates, `conversation-update`, whose next one supersedes it, `hang`,
`user-interrupted`) are dropped, counted in `dropped` and logged once per call.

The delivery side. Every pending delivery this process holds is in a chain: one per call and
destination URL, in the order the messages happened; only a chain's head is ever in flight, so
a call's messages reach a URL in order, and a head waiting for its retry holds back only that
chain. A dispatcher starts heads round-robin over tenants (one per tenant per pass) and over a
tenant's chains, within these bounds:

- `per_destination` requests in flight per (tenant, scheme://host:port) — keyed by tenant too,
  so two tenants behind the same host never share slots or a breaker; a destination that never
  answers holds at most that many of our tasks, and everyone else's requests go out beside them
  (requests are tasks, not a fixed worker pool; `max_in_flight` is only a process-wide
  safety bound, far above what the per-destination caps use at the measured load);
- a circuit breaker per destination (`voice.breaker`, `webhook_breaker_failures` consecutive
  failures open it for `webhook_breaker_seconds`): while open its deliveries are postponed —
  not attempted, not counted as attempts, not dropped — then one trial decides;
- each POST has the server's own `timeoutSeconds` end to end (default 20 s; the client's own
  timeout is Vapi's maximum, so it never caps it), goes through the egress-guarded client
  (`voice.egress_http`: the operator's `AVA_EGRESS_ALLOW`, loopback in dev mode) and is signed
  as `voice.server_messages` describes; the answer's body is never read, only its status;
- a 5xx, 408/425/429, timeout or connection error is retried after an exponential backoff with
  jitter (half the delay fixed, half random: receivers recovering from an outage are not hit by
  every sender at once), `webhook_max_attempts` attempts in all; any other answer is final. An
  outcome is a fixed error kind or `http-<status>` (`voice.egress_http.error_kind`), never what
  the receiver said.

Durability. A delivery is written before its first attempt and its outcome after each one.
Rows are leased to this process while it holds them (renewed every `lease_seconds / 3`);
`running_webhooks` releases them when it stops, and rows nobody holds — left by a stopped or
crashed process (its lease lapses after `lease_seconds`), spilled past `capacity`, or replayed
through the API — are claimed every `poll_seconds` (at once on start and on `poke`), so the
pending deliveries of a previous run are sent after a restart. Delivery is at least once: a
process killed after a receiver answered but before the outcome was written sends it again.

Why a table polled by our own scheduler rather than a task-queue library: arq, saq, taskiq and
dramatiq need Redis, which the single-process SQLite default does not have; procrastinate is
PostgreSQL-only; Celery runs workers in other processes. None of them has per-destination
concurrency caps, breakers, or per-key ordering, which are the point here; the outbox table
gives durability, the delivery log the API shows, and multi-process safety (row leases, `FOR
UPDATE SKIP LOCKED`) on both SQLite and PostgreSQL with what AVA already depends on.

Where messages go (Vapi's precedence): the assistant's `server.url`, else the phone number's
(`register(…, fallback_server=)`). A call is sent webhooks only if `register` was called before
it started (the media and WebRTC routes do it) and one of them has a URL.

`hang`: when the caller's turn has been committed and the assistant has not started answering
within `hang_seconds` (a timer on the event loop), one `hang` message is sent for that turn.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from control.egress import egress_policy
from control.settings import Settings
from storage.deliveries import ClaimedDelivery, DeliveryStatus, DeliveryStore, NewDelivery
from storage.errors import StorageError
from voice.assistant import Assistant
from voice.breaker import BreakerBoard, BreakerState
from voice.call_messages import CallMessages, Outgoing
from voice.egress import EgressPolicy
from voice.egress_http import error_kind, guarded_client
from voice.events import CallEnded, CallEvent
from voice.server_messages import ServerTarget, call_json, encode, envelope, public_assistant

__all__ = ["HANG_SECONDS", "KEPT_ON_OVERFLOW", "WebhookSender", "running_webhooks"]

log = logging.getLogger("ava.webhooks")

HANG_SECONDS = 5.0
# Never dropped when the buffer is full (see the module docstring).
KEPT_ON_OVERFLOW = frozenset({"status-update", "end-of-call-report"})
_RETRY_STATUS = frozenset({408, 425, 429})
# Error kinds no retry can change: the operator's egress policy, a bad URL, a redirect.
_FINAL_KINDS = frozenset({"egress-denied", "invalid-url", "redirect"})
_MAX_SERVER_TIMEOUT = 300.0  # Vapi's largest server.timeoutSeconds
# Small write batches: a tenant's message waits for at most one batch already being written.
_WRITE_BATCH = 50
_CLAIM_BATCH = 500
_DB_ERRORS = (SQLAlchemyError, StorageError, OSError)

Destination = tuple[str, str]  # (tenant id or "", scheme://host:port)
Chain = tuple[str, str]  # (call id, url)


@dataclass(slots=True)
class _Call:
    target: ServerTarget
    assistant: dict[str, Any]
    state: CallMessages
    hang_timer: asyncio.TimerHandle | None = field(default=None)


@dataclass(slots=True, eq=False)
class _Delivery:
    id: str
    tenant: str  # "" for a call without a tenant
    call_id: str
    seq: int
    kind: str
    target: ServerTarget
    body: bytes
    attempts: int = 0
    due: float = 0.0  # wall-clock seconds of the next attempt
    in_flight: bool = False
    chain: Chain = field(init=False)
    destination: Destination = field(init=False)

    def __post_init__(self) -> None:
        self.chain = (self.call_id, self.target.url)
        parts = urlsplit(self.target.url)
        self.destination = (self.tenant, f"{parts.scheme}://{parts.netloc.lower()}")

    def new_row(self) -> NewDelivery:
        target = self.target
        config = {"url": target.url, "timeoutSeconds": target.timeout_seconds}
        if target.secret:
            config["secret"] = target.secret
        if target.headers:
            config["headers"] = dict(target.headers)
        return NewDelivery(
            id=self.id,
            tenant_id=self.tenant or None,
            call_id=self.call_id,
            seq=self.seq,
            type=self.kind,
            url=target.url,
            target=config,
            body=self.body.decode(),
            next_attempt_at=_datetime(self.due),
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivered: bool
    retry: bool
    error_kind: str | None
    status_code: int | None


class WebhookSender:
    """Delivers calls' server messages (see the module docstring for the guarantees)."""

    def __init__(
        self,
        deliveries: DeliveryStore,
        *,
        policy: EgressPolicy | None = None,
        max_attempts: int = 6,
        breaker_failures: int = 5,
        breaker_seconds: float = 30.0,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 300.0,
        per_destination: int = 4,
        max_in_flight: int = 1000,
        buffer_size: int = 10_000,
        capacity: int = 100_000,
        lease_seconds: float = 30.0,
        poll_seconds: float = 5.0,
        hang_seconds: float = HANG_SECONDS,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_attempts < 1 or per_destination < 1 or lease_seconds <= 0:
            raise ValueError("max_attempts, per_destination and lease_seconds must be positive")
        self.owner = f"ava-{uuid.uuid4().hex[:16]}"  # this process's name on its leases
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.per_destination = per_destination
        self.max_in_flight = max_in_flight
        self.buffer_size = buffer_size
        self.capacity = capacity
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.hang_seconds = hang_seconds
        self._store = deliveries
        # No policy given: nothing internal is reachable (the app passes the operator's).
        self._policy = policy or EgressPolicy()
        self._transport = transport
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._breakers = BreakerBoard(breaker_failures, breaker_seconds)
        self._calls: dict[str, _Call] = {}
        self._last_seq = 0
        self._overflow_logged: set[str] = set()
        # The buffer, per tenant: the writer takes from each in turn, so one tenant's burst of
        # messages is not a queue every other tenant's messages wait behind.
        self._buffers: dict[str, deque[_Delivery]] = {}
        self._unwritten = 0
        self._buffered = asyncio.Event()
        self._writing = 0
        # The scheduler's state.
        self._held: dict[str, _Delivery] = {}  # id → delivery, every pending one held here
        self._chains: dict[Chain, list[_Delivery]] = {}  # each sorted by seq
        # tenant → its destinations → their chains; dict order is the turn order, so a
        # destination that cannot take a request is skipped without looking at its chains
        self._tenant_chains: dict[str, dict[Destination, dict[Chain, None]]] = {}
        self._tenants: deque[str] = deque()
        self._in_flight: Counter[Destination] = Counter()
        self._total_in_flight = 0
        self._recording = 0  # attempt outcomes being written
        self._wake = asyncio.Event()
        self._claim_now = asyncio.Event()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._ran = False
        self._http: httpx.AsyncClient | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        # `control.post_call.PostCallAnalyzer.hold`: holds a call's end-of-call-report until its
        # analysis is done (set by the app; None: reports go at once).
        self.hold_reports: Callable[[str, Callable[[Mapping[str, Any]], None]], bool] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, deliveries: DeliveryStore, **options: Any
    ) -> WebhookSender:
        """The sender the app runs: the operator's egress policy, attempts and breaker."""
        return cls(
            deliveries,
            policy=egress_policy(settings),
            max_attempts=settings.webhook_max_attempts,
            breaker_failures=settings.webhook_breaker_failures,
            breaker_seconds=settings.webhook_breaker_seconds,
            **options,
        )

    # --- the sink side (the call's event loop turn: never blocks, never raises) ---------------

    def register(
        self,
        call_id: str,
        assistant: Assistant,
        fallback_server: Mapping[str, Any] | None = None,
    ) -> None:
        """Send this call's messages to its assistant's server, else `fallback_server` (its
        phone number's), if either has a URL."""
        target = None
        for config in (assistant.server, fallback_server):
            try:
                target = ServerTarget.from_config(config)
            except (ValueError, TypeError) as exc:
                log.warning("call %s: server not usable for webhooks: %s", call_id, exc)
            if target is not None:
                break
        if target is None:
            return
        prompt = assistant.model.system_prompt
        prompts = (prompt,) if prompt else ()
        public = public_assistant(assistant)
        state = CallMessages(call_id, frozenset(assistant.server_messages), prompts)
        self._calls[call_id] = _Call(target, public, state)

    def emit(self, event: CallEvent) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        if isinstance(event, CallEnded):
            del self._calls[event.call_id]
            self._overflow_logged.discard(event.call_id)
        messages = call.state.on(event, self._wall())
        if isinstance(event, CallEnded):
            messages = self._hold_report(event.call_id, call, messages)
        self._queue_all(event.call_id, call, messages)
        self._arm_hang(event.call_id, call, ended=isinstance(event, CallEnded))

    def _hold_report(self, call_id: str, call: _Call, messages: list[Outgoing]) -> list[Outgoing]:
        """The messages to queue now: all but an `end-of-call-report` that `hold_reports` keeps
        until the call's analysis is done (bounded by its plan's timeouts); released, the
        report goes with the analysis' fields (`summary`, `analysis`) in place of its own."""
        reports = [m for m in messages if m[0] == "end-of-call-report"]
        if not reports or self.hold_reports is None:
            return messages

        def release(fields: Mapping[str, Any]) -> None:
            self._queue_all(call_id, call, [(kind, {**body, **fields}) for kind, body in reports])

        if not self.hold_reports(call_id, release):
            return messages
        return [m for m in messages if m[0] != "end-of-call-report"]

    def _arm_hang(self, call_id: str, call: _Call, ended: bool) -> None:
        armed = call.state.hang_armed and not ended and "hang" in call.state.wanted
        if armed and call.hang_timer is None:
            loop = asyncio.get_running_loop()
            call.hang_timer = loop.call_later(self.hang_seconds, self._hang, call_id, call)
        elif not armed and call.hang_timer is not None:
            call.hang_timer.cancel()
            call.hang_timer = None

    def _hang(self, call_id: str, call: _Call) -> None:
        call.hang_timer = None
        if self._calls.get(call_id) is call:
            self._queue_all(call_id, call, call.state.hang())

    def _queue_all(self, call_id: str, call: _Call, messages: list[Outgoing]) -> None:
        for kind, fields in messages:
            if self._unwritten >= self.buffer_size and kind not in KEPT_ON_OVERFLOW:
                self._drop(call_id, kind)
                continue
            status = fields.get("status")
            if kind != "status-update" or not isinstance(status, str):
                status = "ended" if kind == "end-of-call-report" else "in-progress"
            now = self._wall()
            started = call.state.started_wall
            message = envelope(
                kind,
                round(now * 1000),
                call_json(call_id, call.state.metadata, status, started or now, now),
                assistant=call.assistant,
                **fields,
            )
            tenant = call.state.metadata.get("tenant_id") or ""
            delivery = _Delivery(
                str(uuid.uuid4()), tenant, call_id, self._next_seq(), kind, call.target,
                encode(message), due=now,
            )  # fmt: skip
            self._buffers.setdefault(tenant, deque()).append(delivery)
            self._unwritten += 1
            self._buffered.set()

    def _drop(self, call_id: str, kind: str) -> None:
        self.dropped += 1
        if call_id not in self._overflow_logged:
            self._overflow_logged.add(call_id)
            log.error(
                "webhook buffer full (%d messages: the database is not keeping up): dropping "
                "%s and later progress messages of call %s",
                self.buffer_size,
                kind,
                call_id,
            )

    def _next_seq(self) -> int:
        # Strictly increasing, and above any earlier process's (time-based), so a call's
        # messages sort in the order they happened even across a restart.
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write, claim and deliver until cancelled."""
        if self._ran:
            raise RuntimeError("WebhookSender.run() runs once per sender")
        self._ran = True
        client = guarded_client(
            self._policy,
            # Each request's deadline is its server's timeoutSeconds (below); this only must
            # not be shorter than the longest one allowed.
            timeout_seconds=_MAX_SERVER_TIMEOUT,
            max_connections=self.max_in_flight,
            transport=self._transport,
        )
        async with client as http, asyncio.TaskGroup() as tasks:
            self._http, self._tasks = http, tasks
            try:
                tasks.create_task(self._write_loop(), name="ava-webhooks-writer")
                tasks.create_task(self._claim_loop(), name="ava-webhooks-claims")
                await self._dispatch_loop()
            finally:
                self._tasks = None

    @property
    def pending(self) -> int:
        """Messages not yet delivered or given up, in the buffer or held by this process."""
        return self._unwritten + self._writing + len(self._held)

    async def persisted(self) -> None:
        """Wait until every message emitted so far is in the database."""
        await self._until(lambda: not self._unwritten and not self._writing)

    async def flush(self) -> None:
        """Wait until every message emitted so far has been delivered or given up (and that
        outcome written)."""
        await self._until(
            lambda: not self._unwritten and not self._writing and not self._held
            and not self._recording
        )  # fmt: skip

    def poke(self) -> None:
        """Look for deliveries nobody holds now (one was replayed), not at the next poll."""
        self._claim_now.set()

    async def release(self) -> None:
        """Give up this process's leases (after `run` has stopped): the next one sends them."""
        released = await self._store.release(self.owner)
        if released:
            log.warning("%d webhook deliveries left pending for the next start", released)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones: exponential, half of
        it random."""
        delay = min(self.backoff_seconds * 2.0 ** (attempts - 1), self.max_backoff_seconds)
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _until(self, done: Callable[[], bool]) -> None:
        if done():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((done, waiter))
        await waiter

    def _settle(self) -> None:
        for entry in list(self._waiters):
            done, waiter = entry
            if waiter.done() or done():
                self._waiters.remove(entry)
                if not waiter.done():
                    waiter.set_result(None)

    # --- the writer: buffer → table -----------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._buffered.wait()
            batch = self._take_batch()
            if not self._unwritten:
                self._buffered.clear()
            self._writing += len(batch)
            try:
                await self._write(batch)
            finally:
                self._writing -= len(batch)
                self._settle()

    def _take_batch(self) -> list[_Delivery]:
        """Up to `_WRITE_BATCH` messages, one per tenant in turn (each tenant's in order)."""
        batch: list[_Delivery] = []
        while self._buffers and len(batch) < _WRITE_BATCH:
            for tenant in list(self._buffers):
                queue = self._buffers[tenant]
                batch.append(queue.popleft())
                if not queue:
                    del self._buffers[tenant]
                if len(batch) == _WRITE_BATCH:
                    break
        self._unwritten -= len(batch)
        return batch

    async def _write(self, batch: list[_Delivery]) -> None:
        # Past `capacity` the rows are written for whoever claims them (this process, later):
        # what this process holds in memory stays bounded.
        held = len(self._held) + len(batch) <= self.capacity
        owner = self.owner if held else None
        lease = _datetime(self._wall() + self.lease_seconds)
        while True:
            try:
                await self._store.add([d.new_row() for d in batch], owner=owner, lease_until=lease)
                break
            except IntegrityError:
                # A tenant deleted mid-call: write the others, count the orphans as dropped.
                batch = await self._write_one_by_one(batch, owner, lease)
                break
            except _DB_ERRORS:
                log.error("webhook deliveries not written; retrying", exc_info=True)
                await asyncio.sleep(1.0)
        if held:
            for delivery in batch:
                self._hold(delivery)
        else:
            self._claim_now.set()

    async def _write_one_by_one(
        self, batch: list[_Delivery], owner: str | None, lease: datetime
    ) -> list[_Delivery]:
        written = []
        for delivery in batch:
            while True:
                try:
                    await self._store.add([delivery.new_row()], owner=owner, lease_until=lease)
                except IntegrityError:
                    self.dropped += 1
                    log.error("webhook %s of call %s not written: its tenant is gone",
                              delivery.kind, delivery.call_id)  # fmt: skip
                    break
                except _DB_ERRORS:
                    log.error("webhook delivery not written; retrying", exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                written.append(delivery)
                break
        return written

    # --- claims: rows nobody holds, and this process's leases ----------------------------------

    async def _claim_loop(self) -> None:
        next_renewal = self._wall() + self.lease_seconds / 3
        while True:
            self._claim_now.clear()
            try:
                if self._wall() >= next_renewal:
                    await self._store.renew(
                        self.owner, _datetime(self._wall() + self.lease_seconds)
                    )
                    next_renewal = self._wall() + self.lease_seconds / 3
                more = await self._claim()
            except _DB_ERRORS:
                log.error("webhook deliveries not claimed; retrying", exc_info=True)
                more = False
            if more:
                continue
            wait = min(self.poll_seconds, max(0.0, next_renewal - self._wall()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._claim_now.wait()

    async def _claim(self) -> bool:
        """Claim what fits; True when there may be more to claim at once."""
        room = min(_CLAIM_BATCH, self.capacity - len(self._held))
        if room <= 0:
            return False
        now = self._wall()
        claimed = await self._store.claim(
            self.owner,
            now=_datetime(now),
            lease_until=_datetime(now + self.lease_seconds),
            limit=room,
        )
        for row in claimed:
            delivery = self._from_row(row)
            if delivery is not None:
                self._hold(delivery)
        return len(claimed) == room

    def _from_row(self, row: ClaimedDelivery) -> _Delivery | None:
        if row.id in self._held:
            return None
        try:
            target = ServerTarget.from_config(row.target)
        except (ValueError, TypeError):
            target = None
        if target is None:  # stored by a version with other rules: cannot be sent
            log.error("webhook delivery %s has an unusable target", row.id)
            return None
        return _Delivery(
            row.id, row.tenant_id or "", row.call_id, row.seq, row.type, target,
            row.body.encode(), attempts=row.attempts, due=row.next_attempt_at.timestamp(),
        )  # fmt: skip

    # --- the scheduler ------------------------------------------------------------------------

    def _hold(self, delivery: _Delivery) -> None:
        if delivery.id in self._held:
            return
        self._held[delivery.id] = delivery
        chain = self._chains.setdefault(delivery.chain, [])
        if chain and chain[0].in_flight and delivery.seq < chain[0].seq:
            chain.insert(1, delivery)  # a late-claimed older message: next, not beside the head
        else:
            bisect.insort(chain, delivery, key=lambda d: d.seq)
        destinations = self._tenant_chains.get(delivery.tenant)
        if destinations is None:
            destinations = self._tenant_chains[delivery.tenant] = {}
            self._tenants.append(delivery.tenant)
        destinations.setdefault(delivery.destination, {}).setdefault(delivery.chain, None)
        self._wake.set()

    def _release_head(self, delivery: _Delivery) -> None:
        """Forget a finished delivery (the head of its chain)."""
        del self._held[delivery.id]
        chain = self._chains[delivery.chain]
        chain.remove(delivery)
        if chain:
            return
        del self._chains[delivery.chain]
        destinations = self._tenant_chains[delivery.tenant]
        chains = destinations[delivery.destination]
        del chains[delivery.chain]
        if chains:
            return
        del destinations[delivery.destination]
        if not destinations:
            del self._tenant_chains[delivery.tenant]
            self._tenants.remove(delivery.tenant)

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            wake_at = self._dispatch(self._wall())
            timeout = None if wake_at is None else max(0.0, wake_at - self._wall())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _dispatch(self, now: float) -> float | None:
        """Start every head that may start, one per tenant per pass; returns when something
        held back becomes startable by time alone (a backoff or a breaker's cool-down)."""
        wake_at: float | None = None
        started = True
        while started and self._total_in_flight < self.max_in_flight:
            started = False
            for _ in range(len(self._tenants)):
                tenant = self._tenants[0]
                self._tenants.rotate(-1)
                delivery, later = self._next_head(tenant, now)
                if later is not None:
                    wake_at = later if wake_at is None else min(wake_at, later)
                if delivery is not None:
                    self._start(delivery)
                    started = True
                    if self._total_in_flight >= self.max_in_flight:
                        break
        return wake_at

    def _next_head(self, tenant: str, now: float) -> tuple[_Delivery | None, float | None]:
        later: float | None = None
        destinations = self._tenant_chains[tenant]
        for destination, chains in destinations.items():
            if self._in_flight[destination] >= self.per_destination:
                continue  # woken when one of them finishes
            breaker = self._breakers.get(_breaker_key(destination))
            if breaker.state(now) is BreakerState.OPEN:
                assert breaker.opened_at is not None
                reopen = breaker.opened_at + breaker.cool_down
                later = reopen if later is None else min(later, reopen)
                continue
            for key in chains:
                head = self._chains[key][0]
                if head.in_flight:
                    continue
                if head.due > now:
                    later = head.due if later is None else min(later, head.due)
                    continue
                if not breaker.allow(now):
                    break  # half-open with its trial out: woken when it finishes
                # This chain and its destination go to the back of the tenant's turn order.
                del chains[key]
                chains[key] = None
                del destinations[destination]
                destinations[destination] = chains
                return head, later
        return None, later

    def _start(self, delivery: _Delivery) -> None:
        assert self._tasks is not None
        delivery.in_flight = True
        self._in_flight[delivery.destination] += 1
        self._total_in_flight += 1
        self._tasks.create_task(self._attempt(delivery), name=f"ava-webhook-{delivery.id}")

    async def _attempt(self, delivery: _Delivery) -> None:
        outcome = await self._post(delivery)
        now = self._wall()
        delivery.attempts += 1
        breaker = self._breakers.get(_breaker_key(delivery.destination))
        status: DeliveryStatus
        if outcome.delivered or not outcome.retry:
            breaker.record_success(now)  # it answered: the destination is up
        else:
            breaker.record_failure(now)
        if outcome.delivered:
            status = "delivered"
            self.delivered += 1
        elif outcome.retry and delivery.attempts < self.max_attempts:
            status = "pending"
            delivery.due = now + self.backoff(delivery.attempts)
        else:
            status = "failed"
            self.failed += 1
            log.warning(
                "webhook %s for call %s to %s failed after %d attempts: %s",
                delivery.kind, delivery.call_id, delivery.target.url, delivery.attempts,
                outcome.error_kind,
            )  # fmt: skip
        delivery.in_flight = False
        self._in_flight[delivery.destination] -= 1
        self._total_in_flight -= 1
        if status != "pending":
            self._release_head(delivery)
        self._recording += 1
        self._wake.set()
        try:
            await self._store.record_attempt(
                delivery.id,
                self.owner,
                status=status,
                attempts=delivery.attempts,
                next_attempt_at=_datetime(delivery.due),
                error_kind=outcome.error_kind,
                status_code=outcome.status_code,
            )
        except _DB_ERRORS:
            # The row keeps its previous state: sent again after a restart (at least once).
            log.error("webhook delivery %s outcome not written", delivery.id, exc_info=True)
        finally:
            self._recording -= 1
            self._settle()

    async def _post(self, delivery: _Delivery) -> _Outcome:
        assert self._http is not None
        target = delivery.target
        headers = target.request_headers(delivery.body, int(self._wall()))
        seconds = target.timeout_seconds
        try:
            async with (
                asyncio.timeout(seconds),
                self._http.stream(
                    "POST", target.url, content=delivery.body, headers=headers, timeout=seconds
                ) as response,
            ):
                status = response.status_code  # its body is never read
        except (TimeoutError, httpx.HTTPError) as exc:  # EgressDenied is an httpx error too
            kind = error_kind(exc)
            return _Outcome(False, kind not in _FINAL_KINDS, kind, None)
        except Exception:
            # The boundary of a tenant's request: a config httpx refuses in some other way
            # (a header value it cannot encode, say) fails this delivery, never the sender.
            log.warning("webhook %s for call %s could not be sent", delivery.kind,
                        delivery.call_id, exc_info=True)  # fmt: skip
            return _Outcome(False, False, "request-failed", None)
        if 200 <= status < 300:
            return _Outcome(True, False, None, status)
        retry = status >= 500 or status in _RETRY_STATUS
        return _Outcome(False, retry, error_kind(status), status)


def _breaker_key(destination: Destination) -> str:
    return f"{destination[0]} {destination[1]}"


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@asynccontextmanager
async def running_webhooks(
    sender: WebhookSender, persist_seconds: float = 5.0, grace_seconds: float = 1.0
) -> AsyncIterator[WebhookSender]:
    """The sender's tasks for the app's lifetime. At the end, what was emitted gets
    `persist_seconds` to reach the database and `grace_seconds` to be delivered; what is still
    pending then stays in the table, released, and is sent after the next start."""
    task = asyncio.create_task(sender.run(), name="ava-webhooks")
    try:
        yield sender
    finally:
        try:
            async with asyncio.timeout(persist_seconds):
                await sender.persisted()
        except TimeoutError:
            log.error("%d webhook messages not written at shutdown", sender.pending)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await sender.flush()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await sender.release()
        except _DB_ERRORS:
            log.error("webhook leases not released; they lapse on their own", exc_info=True)

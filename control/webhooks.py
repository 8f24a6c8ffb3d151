"""Vapi server messages delivered to the call's server, off the call's hot path.

`WebhookSender` is an `EventSink`: `emit` only turns the event into messages
(`voice.call_messages`, which also applies the assistant's `serverMessages`) and puts them on a
bounded queue (overflow policy: the new message is dropped and counted in `dropped`, so a dead
receiver can never slow or stop a call). Each call's messages go to one of `workers` queues
(by call id), each drained by one worker, so a call's messages arrive in the order they
happened; a receiver that is slow or retried holds up the calls sharing its worker, never the
calls themselves. Each POST is signed as `voice.server_messages` describes, within the server's
`timeoutSeconds`; a 5xx, 429, timeout or connection error is retried with exponential backoff
(`max_attempts` in all), any other status is final.

Where they go (Vapi's precedence): the assistant's `server.url`, else the phone number's
(`register(…, fallback_server=)`). A call is sent webhooks only if `register` was called before
it started (the media and WebRTC routes do it) and one of them has a URL.

`hang`: when the caller's turn has been committed and the assistant has not started answering
within `hang_seconds` (a timer on the event loop), one `hang` message is sent for that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from voice.assistant import Assistant
from voice.call_messages import CallMessages, Outgoing
from voice.events import CallEnded, CallEvent
from voice.server_messages import ServerTarget, call_json, encode, envelope, public_assistant

__all__ = ["HANG_SECONDS", "WebhookSender", "running_webhooks"]

log = logging.getLogger("ava.webhooks")

_RETRY_STATUS = frozenset({408, 425, 429})
HANG_SECONDS = 5.0


@dataclass(slots=True)
class _Call:
    target: ServerTarget
    assistant: dict[str, Any]
    state: CallMessages
    hang_timer: asyncio.TimerHandle | None = field(default=None)


@dataclass(frozen=True, slots=True)
class Delivery:
    call_id: str
    kind: str
    target: ServerTarget
    message: dict[str, Any]


class WebhookSender:
    def __init__(
        self,
        *,
        queue_size: int = 1000,
        workers: int = 2,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        hang_seconds: float = HANG_SECONDS,
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        per_worker = max(1, queue_size // workers)
        self._queues: list[asyncio.Queue[Delivery]] = [
            asyncio.Queue(maxsize=per_worker) for _ in range(workers)
        ]
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.hang_seconds = hang_seconds
        self._wall = wall_clock
        self._transport = transport
        self._calls: dict[str, _Call] = {}
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

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
            except ValueError as exc:
                log.warning("call %s: server not usable for webhooks: %s", call_id, exc)
            if target is not None:
                break
        if target is None:
            return
        prompt = assistant.model.system_prompt
        prompts = (prompt,) if prompt else ()
        public = public_assistant(assistant)
        state = CallMessages(
            call_id,
            frozenset(assistant.server_messages),
            prompts,
            model=public.get("model", {}),
            voice=public.get("voice", {}),
        )
        self._calls[call_id] = _Call(target, public, state)

    def emit(self, event: CallEvent) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        if isinstance(event, CallEnded):
            del self._calls[event.call_id]
        self._queue_all(event.call_id, call, call.state.on(event, self._wall()))
        self._arm_hang(event.call_id, call, ended=isinstance(event, CallEnded))

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
            queue = self._queues[zlib.crc32(call_id.encode()) % len(self._queues)]
            try:
                queue.put_nowait(Delivery(call_id, kind, call.target, message))
            except asyncio.QueueFull:
                self.dropped += 1
                log.error("webhook queue full: %s for call %s dropped", kind, call_id)

    # --- the delivery side ----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with httpx.AsyncClient(transport=self._transport, follow_redirects=False) as http:
            async with asyncio.TaskGroup() as tg:
                for queue in self._queues:
                    tg.create_task(self._worker(http, queue))

    @property
    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues)

    async def flush(self) -> None:
        """Wait until everything queued so far has been delivered or given up."""
        for queue in self._queues:
            await queue.join()

    async def _worker(self, http: httpx.AsyncClient, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            delivery = await queue.get()
            try:
                if await self._deliver(http, delivery):
                    self.delivered += 1
                else:
                    self.failed += 1
            finally:
                queue.task_done()

    async def _deliver(self, http: httpx.AsyncClient, delivery: Delivery) -> bool:
        target = delivery.target
        body = encode(delivery.message)
        for attempt in range(1, self.max_attempts + 1):
            problem = await self._attempt(http, target, body)
            if problem is None:
                return True
            retry, why = problem
            if not retry or attempt == self.max_attempts:
                log.warning(
                    "webhook %s for call %s to %s failed after %d attempts: %s",
                    delivery.kind, delivery.call_id, target.url, attempt, why,
                )  # fmt: skip
                return False
            delay = min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds)
            await asyncio.sleep(delay)
        return False

    async def _attempt(
        self, http: httpx.AsyncClient, target: ServerTarget, body: bytes
    ) -> tuple[bool, str] | None:
        """None when delivered; else (worth retrying, why not)."""
        headers = target.request_headers(body, int(self._wall()))
        try:
            async with asyncio.timeout(target.timeout_seconds):
                response = await http.post(target.url, content=body, headers=headers)
        except TimeoutError:
            return True, f"no answer within {target.timeout_seconds:g}s"
        except httpx.HTTPError as exc:
            return True, f"{type(exc).__name__}: {exc}"
        status = response.status_code
        if 200 <= status < 300:
            return None
        return status >= 500 or status in _RETRY_STATUS, f"HTTP {status}"


@asynccontextmanager
async def running_webhooks(
    sender: WebhookSender | None = None, flush_seconds: float = 5.0
) -> AsyncIterator[WebhookSender]:
    """The sender's workers for the app's lifetime; what is queued at the end gets
    `flush_seconds` to go out."""
    sender = sender or WebhookSender()
    task = asyncio.create_task(sender.run(), name="ava-webhooks")
    try:
        yield sender
    finally:
        try:
            async with asyncio.timeout(flush_seconds):
                await sender.flush()
        except TimeoutError:
            log.error("%d webhooks undelivered at shutdown", sender.pending)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

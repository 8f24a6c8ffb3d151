"""Vapi server messages delivered to the assistant's `server.url`, off the call's hot path.

`WebhookSender` is an `EventSink`: `emit` only builds the message and puts it on a bounded queue
(overflow policy: the new message is dropped and counted in `dropped`, so a dead receiver can
never slow or stop a call). A few worker tasks POST the queue, signed as
`voice.server_messages` describes, each within the server's `timeoutSeconds`; a 5xx, 429,
timeout or connection error is retried with exponential backoff (`max_attempts` in all), any
other status is final. The messages sent, when the assistant's `serverMessages` lists them
(Vapi's default list does):

- `status-update` with `status: "in-progress"` when the call starts, `"ended"` (and
  `endedReason`) when it ends;
- `end-of-call-report` after the call: `endedReason`, `startedAt`, `endedAt`, `durationSeconds`,
  `cost`, `costs`, `messages`, `transcript`, and the same inside `artifact` (Vapi sends both the
  legacy top-level fields and `artifact`; community handlers read either).

Costs are usage, priced at 0: AVA has no price table (a self-hosted server pays its providers
directly); `costs` carries minutes, LLM tokens and TTS characters so a receiver can price them.

A call is sent webhooks only if `register(call_id, assistant)` was called before it started
(the media route does it) and its assistant has a `server.url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from voice.assistant import Assistant
from voice.events import CallEnded, CallEvent, CallStarted, MessageAdded
from voice.server_messages import ServerTarget, call_json, encode, envelope, public_assistant

__all__ = ["WebhookSender", "running_webhooks"]

log = logging.getLogger("ava.webhooks")

_MAX_MESSAGES = 2000  # per call kept for the report; a longer call's report keeps the first ones
_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(slots=True)
class _Call:
    target: ServerTarget
    wanted: frozenset[str]
    assistant: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    started_wall: float | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Delivery:
    call_id: str
    kind: str
    target: ServerTarget
    message: dict[str, Any]


def _iso(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class WebhookSender:
    def __init__(
        self,
        *,
        queue_size: int = 1000,
        workers: int = 2,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=queue_size)
        self._workers = workers
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._wall = wall_clock
        self._transport = transport
        self._calls: dict[str, _Call] = {}
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    # --- the sink side (the call's event loop turn: never blocks, never raises) ---------------

    def register(self, call_id: str, assistant: Assistant) -> None:
        """Send this call's messages to its assistant's server (if it has one)."""
        try:
            target = ServerTarget.from_config(assistant.server)
        except ValueError as exc:
            log.warning("call %s: no webhooks: %s", call_id, exc)
            return
        if target is not None:
            wanted = frozenset(assistant.server_messages)
            self._calls[call_id] = _Call(target, wanted, public_assistant(assistant))

    def emit(self, event: CallEvent) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        if isinstance(event, CallStarted):
            call.metadata = dict(event.metadata)
            call.started_wall = event.wall - event.at
            self._send(event.call_id, call, "status-update", status="in-progress")
        elif isinstance(event, MessageAdded):
            if len(call.messages) < _MAX_MESSAGES:
                call.messages.append(_message(event, call.started_wall))
        elif isinstance(event, CallEnded):
            del self._calls[event.call_id]
            self._ended(event, call)

    def _ended(self, event: CallEnded, call: _Call) -> None:
        reason = event.reason.value
        self._send(event.call_id, call, "status-update", status="ended", endedReason=reason)
        started = call.started_wall if call.started_wall is not None else self._wall() - event.at
        ended = started + event.at
        usage = event.summary.get("usage", {}) if isinstance(event.summary, Mapping) else {}
        openai = event.summary.get("messages", []) if isinstance(event.summary, Mapping) else []
        transcript = "\n".join(
            f"{'AI' if m['role'] == 'bot' else 'User'}: {m['message']}"
            for m in call.messages
            if m["role"] in ("bot", "user") and m["message"]
        )
        costs = [
            {"type": "transport", "provider": "twilio", "minutes": round(event.at / 60, 4),
             "cost": 0},
            {"type": "model", "promptTokens": int(usage.get("promptTokens", 0)),
             "completionTokens": int(usage.get("completionTokens", 0)), "cost": 0},
            {"type": "voice", "characters": int(usage.get("characters", 0)), "cost": 0},
        ]  # fmt: skip
        artifact = {
            "messages": call.messages,
            "messagesOpenAIFormatted": openai,
            "transcript": transcript,
        }
        self._send(
            event.call_id, call, "end-of-call-report",
            endedReason=reason, endedMessage=event.detail,
            startedAt=_iso(started), endedAt=_iso(ended),
            durationSeconds=round(event.at, 3), durationMs=round(event.at * 1000),
            cost=0, costs=costs, messages=call.messages, transcript=transcript,
            summary="", artifact=artifact, analysis={},
        )  # fmt: skip

    def _send(self, call_id: str, call: _Call, kind: str, **fields: Any) -> None:
        if kind not in call.wanted:
            return
        status = fields.get("status", "ended" if kind == "end-of-call-report" else "in-progress")
        message = envelope(
            kind,
            round(self._wall() * 1000),
            call_json(call_id, call.metadata, status),
            assistant=call.assistant,
            **fields,
        )
        try:
            self._queue.put_nowait(Delivery(call_id, kind, call.target, message))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("webhook queue full: %s for call %s dropped", kind, call_id)

    # --- the delivery side ----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with httpx.AsyncClient(transport=self._transport, follow_redirects=False) as http:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self._workers):
                    tg.create_task(self._worker(http))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def flush(self) -> None:
        """Wait until everything queued so far has been delivered or given up."""
        await self._queue.join()

    async def _worker(self, http: httpx.AsyncClient) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                if await self._deliver(http, delivery):
                    self.delivered += 1
                else:
                    self.failed += 1
            finally:
                self._queue.task_done()

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


def _message(event: MessageAdded, started_wall: float | None) -> dict[str, Any]:
    """A Vapi `messages[]` entry (role bot/user/tool_calls/tool_call_result)."""
    message: dict[str, Any] = {
        "role": event.role,
        "message": event.content,
        "secondsFromStart": round(event.at, 3),
    }
    if started_wall is not None:
        message["time"] = round((started_wall + event.at) * 1000)
    if event.duration:
        message["duration"] = round(event.duration * 1000)
    if event.role == "tool_calls":
        message["toolCalls"] = list(event.tool_calls)
    elif event.role == "tool_call_result":
        message |= {"toolCallId": event.tool_call_id, "name": event.name, "result": event.content}
    return message


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

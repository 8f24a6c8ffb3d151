"""Control commands for calls held by another node: Redis pub/sub, one channel per node.

A node listens on `ava:node:<node_id>:control` for commands and on
`ava:node:<node_id>:control-replies` for the answers to its own. A request carries an id, the
call, the tenant and the command (as the client sent it, re-validated by the owner); the owner
carries it out on its live session (which never waits on the call) and publishes
`{id, status, message}` to the requester's reply channel. The requester waits at most
`wait_seconds`: a node that is not subscribed (PUBLISH reaches nobody) or does not answer in
time is "not answering", which the API reports as 504 naming the orphan sweep that will close
the call if the node is dead.

`LocalBus` is the single-process default: there is no other node to reach. `RedisBus.run` is
the listener, for the app's lifetime: it survives Redis going away (reconnects with backoff,
logs each loss) and handles one message at a time, each in microseconds (commands are only
posted to the session's inbox), so it never holds up a call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from control.control_commands import ControlOutcome

__all__ = ["ControlBus", "ControlRequest", "Handler", "LocalBus", "RedisBus", "client_name"]

log = logging.getLogger("ava.control")

_MAX_MESSAGE_BYTES = 64 * 1024  # a command is bounded far below this (control_commands)
_MIN_BACKOFF, _MAX_BACKOFF = 0.1, 5.0


@dataclass(frozen=True, slots=True)
class ControlRequest:
    call_id: str
    tenant_id: str
    command: dict[str, Any]  # as the client sent it; validated again where it is carried out


Handler = Callable[[ControlRequest], ControlOutcome]


class ControlBus(Protocol):
    # Other nodes can be reached (and this one must listen): Redis.
    shared: bool

    async def request(
        self, node_id: str, request: ControlRequest, wait_seconds: float
    ) -> ControlOutcome:
        """Have `node_id` carry out `request`; its outcome, or 503/504 saying why there is none."""
        ...

    async def run(self, handler: Handler) -> None:
        """Carry out the requests sent to this node until cancelled."""
        ...

    async def aclose(self) -> None: ...


class LocalBus:
    """One process, no Redis: a call held by another node cannot be reached from here."""

    shared = False

    async def request(
        self, node_id: str, request: ControlRequest, wait_seconds: float
    ) -> ControlOutcome:
        return ControlOutcome(
            409,
            f"call {request.call_id} is not live in this process (it was held by node "
            f"{node_id}); without AVA_REDIS_URL no other process can be reached",
        )

    async def run(self, handler: Handler) -> None:
        return None

    async def aclose(self) -> None:
        return None


def client_name(node_id: str) -> str:
    """The listener's CLIENT SETNAME (no spaces allowed): to find it in CLIENT LIST."""
    return "ava-control-" + re.sub(r"[^\w.:-]", "_", node_id)[:100]


class RedisBus:
    shared = True

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        ttl_seconds: float,
        prefix: str = "ava:",
        max_pending: int = 256,
        timeout: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.ttl_seconds = ttl_seconds
        self.reconnects = 0  # Redis losses the listener recovered from
        self._prefix = prefix
        self._max_pending = max_pending
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # The listener's connection waits for messages indefinitely: no read timeout.
        self._listener: Redis = Redis.from_url(
            url, socket_connect_timeout=timeout, client_name=client_name(node_id)
        )
        self._pending: dict[str, asyncio.Future[ControlOutcome]] = {}
        self.listening = asyncio.Event()

    def channel(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}:control"

    def _replies(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}:control-replies"

    # --- asking ----------------------------------------------------------------------------------

    async def request(
        self, node_id: str, request: ControlRequest, wait_seconds: float
    ) -> ControlOutcome:
        if not self.listening.is_set():
            return ControlOutcome(
                503, "this node cannot reach the other nodes now (Redis is unavailable); retry"
            )
        if len(self._pending) >= self._max_pending:
            return ControlOutcome(503, "too many control requests in flight on this node; retry")
        request_id = secrets.token_hex(8)
        answer: asyncio.Future[ControlOutcome] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        payload = json.dumps(
            {
                "id": request_id,
                "callId": request.call_id,
                "tenantId": request.tenant_id,
                "command": request.command,
                "replyTo": self.node_id,
            }
        )
        try:
            async with asyncio.timeout(wait_seconds):
                receivers = await self._redis.publish(self.channel(node_id), payload)
                if receivers == 0:
                    return self._not_answering(node_id, request, "it is not listening")
                return await answer
        except TimeoutError:
            return self._not_answering(node_id, request, f"no answer within {wait_seconds:g} s")
        except RedisError as exc:
            return ControlOutcome(503, f"the command could not be sent (Redis: {exc}); retry")
        finally:
            self._pending.pop(request_id, None)

    def _not_answering(self, node_id: str, request: ControlRequest, why: str) -> ControlOutcome:
        return ControlOutcome(
            504,
            f"call {request.call_id} is held by node {node_id}, which is not answering ({why}). "
            f"If that node has died its heartbeat expires within {self.ttl_seconds:g} s and a "
            "surviving node ends the call (server-died) and hangs it up; end-call ends it now.",
        )

    # --- listening -------------------------------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        backoff = _MIN_BACKOFF
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel(self.node_id), self._replies(self.node_id))
                self.listening.set()
                if backoff > _MIN_BACKOFF:
                    log.info("control bus: listening again on Redis")
                backoff = _MIN_BACKOFF
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        await self._on_message(message, handler)
            except (RedisError, OSError) as exc:
                self.reconnects += 1
                log.warning("control bus: Redis lost (%s); reconnecting in %.1f s", exc, backoff)
            finally:
                self.listening.clear()
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    pass  # the connection is already gone
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _on_message(self, message: dict[str, Any], handler: Handler) -> None:
        data = message.get("data")
        if not isinstance(data, bytes) or len(data) > _MAX_MESSAGE_BYTES:
            log.warning("control bus: dropped a message that is not a bounded command")
            return
        try:
            body = json.loads(data)
            request_id = str(body["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("control bus: dropped a malformed message")
            return
        channel = message.get("channel", b"")
        if channel == self._replies(self.node_id).encode():
            answer = self._pending.get(request_id)
            try:
                outcome = ControlOutcome(int(body["status"]), str(body["message"]))
            except (KeyError, TypeError, ValueError):
                log.warning("control bus: dropped a malformed reply")
                return
            if answer is not None and not answer.done():
                answer.set_result(outcome)
            return
        try:
            request = ControlRequest(
                str(body["callId"]), str(body["tenantId"]), dict(body["command"])
            )
            reply_to = str(body["replyTo"])
        except (KeyError, TypeError, ValueError):
            log.warning("control bus: dropped a malformed request")
            return
        try:
            outcome = handler(request)
        except Exception:  # the listener's boundary: one failed command must not deafen the node
            log.error("control bus: command for call %s failed", request.call_id, exc_info=True)
            outcome = ControlOutcome(500, "the node holding the call failed to carry it out")
        reply = {"id": request_id, "status": outcome.status, "message": outcome.message}
        try:
            await self._redis.publish(self._replies(reply_to), json.dumps(reply))
        except RedisError as exc:
            # The requester times out and says so; the command itself was carried out.
            log.warning("control bus: reply to %s not sent: %s", reply_to, exc)

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._listener.aclose()

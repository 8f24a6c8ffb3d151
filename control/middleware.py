"""The HTTP edge: request ids, an access log, request size limits, per-key rate limits.

Pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which runs the app in a separate task,
breaks streaming and adds latency). Order, outermost first: `RequestContext` (so even a 413 or
a 500 carries the request id), then `BodyLimit`, then `JsonLimits` (JSON bodies nested too deep
or holding too long a string: 422 before any route parses them). The rate limit is not
middleware: it needs the API key's identity, so it runs in `control.deps.current_tenant` right
after authentication, which also keeps Twilio's webhooks and media stream (signature-checked,
no key) out of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control.errors import ApiError
from control.limits import LocalRateLimiter, RateLimiter
from control.logs import REQUEST_ID, TENANT_ID
from control.metrics import Metrics, metrics_router
from control.settings import Settings
from voice.json_bounds import JsonBounds, JsonTooComplex, check_json, text_depth

__all__ = [
    "BodyLimit",
    "JsonLimits",
    "RateLimited",
    "RequestContext",
    "check_rate_limit",
    "install_operations",
    "make_rate_limiter",
]

log = logging.getLogger("ava.http")

HEADER = "x-request-id"
# Ids from a proxy or client are echoed into headers and logs: only plain tokens, bounded.
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Probes hit these every few seconds; their access lines are debug-level noise.
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def _error_body(status: int, message: str | list[str]) -> bytes:
    """Vapi's error shape, as `control.errors` answers with."""
    body = {"message": message, "error": HTTPStatus(status).phrase, "statusCode": status}
    return json.dumps(body).encode()


async def _send_error(
    send: Send, status: int, message: str | list[str], headers: list[Any]
) -> None:
    body = _error_body(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestContext:
    """Gives each request an id: the caller's `X-Request-Id` if it is a plain token of at most
    128 characters, else a new one. It is echoed in the response, bound for every log line
    written while the request runs (a media websocket's: the whole call), and the request is
    access-logged with it. An exception that escapes the app becomes a Vapi-shaped 500 that
    carries the id, when no response had started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = _header(scope, HEADER.encode())
        request_id = given if given and _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.accept"):
                status = message.get("status", 101)
                message.setdefault("headers", [])  # optional in ASGI
                MutableHeaders(scope=message).append(HEADER, request_id)
            await send(message)

        request_token = REQUEST_ID.set(request_id)
        # The tenant is learned inside (control.deps); start each request without one.
        tenant_token = TENANT_ID.set(None)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if scope["type"] == "http" and status == 0:
                status = 500
                await _send_error(
                    send, 500, "internal server error", [(HEADER.encode(), request_id.encode())]
                )
            raise
        finally:
            if scope["type"] == "http":
                # No response at all: the client went away first (nginx's 499).
                self._access_log(scope, status or 499, time.perf_counter() - started)
            TENANT_ID.reset(tenant_token)
            REQUEST_ID.reset(request_token)

    @staticmethod
    def _access_log(scope: Scope, status: int, seconds: float) -> None:
        path: str = scope.get("path", "")
        level = logging.DEBUG if path in _QUIET_PATHS and status < 400 else logging.INFO
        if not log.isEnabledFor(level):
            return
        method: str = scope.get("method", "")
        client = scope.get("client")
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "client": client[0] if client else None,
        }
        message = "%s %s %d %.1f ms"
        log.log(level, message, method, path, status, seconds * 1000, extra={"fields": fields})


class _TooLarge(HTTPException):
    """Raised from `receive` to stop the app reading; FastAPI re-raises HTTPExceptions from
    body parsing, and whatever response the app makes of it is replaced by our 413."""

    def __init__(self) -> None:
        super().__init__(413)


class BodyLimit:
    """Refuses HTTP request bodies over `max_bytes` with 413: at once when Content-Length says
    so, else as soon as the streamed bytes pass the limit; the app never sees more.

    Before answering, what is left of a body not far over the limit (`drain_bytes` more, within
    `drain_seconds`) is read and thrown away, so the client, still sending, reads the 413
    instead of a connection reset, and the connection stays usable. Anything bigger or slower
    gets the 413 at once and the connection closed.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        on_reject: Callable[[], None] | None = None,
        *,
        drain_bytes: int = 1024 * 1024,
        drain_seconds: float = 2.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            near = int(declared) <= self.max_bytes + self.drain_bytes
            await self._reject(send, drained=near and await self._drain(receive))
            return
        received = 0
        exceeded = False
        body_done = False
        app_responded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_responded
            if exceeded and not app_responded:
                return  # the app's answer to _TooLarge; ours follows
            if message["type"] == "http.response.start":
                app_responded = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or app_responded:
                raise
        if exceeded and not app_responded:
            await self._reject(send, drained=body_done or await self._drain(receive))

    async def _drain(self, receive: Receive) -> bool:
        """Read and discard the rest of the body within budget; whether it all came."""
        budget = self.drain_bytes
        try:
            async with asyncio.timeout(self.drain_seconds):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return False  # the client went away
                    budget -= len(message.get("body", b""))
                    if budget < 0:
                        return False
                    if not message.get("more_body", False):
                        return True
        except TimeoutError:
            return False

    async def _reject(self, send: Send, *, drained: bool) -> None:
        if self.on_reject is not None:
            self.on_reject()
        # Unless the body was read to its end, the rest may still be on its way: close.
        headers = [] if drained else [(b"connection", b"close")]
        await _send_error(send, 413, f"request body over {self.max_bytes} bytes", headers)


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse this body as JSON: a JSON media type, or none at all."""
    content_type = _header(scope, b"content-type")
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class JsonLimits:
    """Refuses a JSON request body nested deeper than `bounds.max_depth` or holding a string
    longer than `bounds.max_string_chars` with 422 naming the limit and where it was passed.

    Routes, pydantic and the secret sealing all walk bodies recursively; a body nested 900 deep
    made them raise RecursionError, some after the row was stored (issue 9, finding 7). The
    check here runs first and cannot recurse: the depth is read from the raw text
    (`voice.json_bounds.text_depth`), and only a body within it is parsed and walked for string
    lengths. Bodies that are not JSON go through untouched for the route to refuse. The body
    is read whole, which `BodyLimit` (outside this) has already capped.
    """

    def __init__(self, app: ASGIApp, bounds: JsonBounds | None = None) -> None:
        self.app = app
        self.bounds = bounds or JsonBounds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away mid-body: let the app see that as it would have.
                await self.app(scope, _replay([], message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = self._problem(body)
        if problem is not None:
            await _send_error(send, 422, problem, [])
            return
        request: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([request], None, receive), send)

    def _problem(self, body: bytes) -> list[str] | None:
        limit = self.bounds.max_depth
        if text_depth(body, limit) > limit:
            return [f"body: JSON nested deeper than {limit} levels (the limit)"]
        try:
            value = json.loads(body)
        except ValueError:
            return None  # not JSON: the route answers that
        try:
            check_json(value, self.bounds)
        except JsonTooComplex as exc:
            return [f"{exc.path}: {exc.problem} (the limit)"]
        return None


def _replay(messages: list[Message], then: Message | None, receive: Receive) -> Receive:
    """A `receive` that gives `messages`, then `then` if any, then the real `receive`'s."""
    queued = [*messages, *([then] if then is not None else [])]

    async def replayed() -> Message:
        if queued:
            return queued.pop(0)
        return await receive()

    return replayed


class RateLimited(ApiError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(429, "rate limit exceeded for this API key; retry later")
        # Retry-After is whole seconds; rounding down would invite a retry that fails again.
        self.retry_after = max(1, math.ceil(retry_after))


async def _rate_limited(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    return JSONResponse(
        json.loads(_error_body(429, str(exc.message))),
        429,
        headers={"Retry-After": str(exc.retry_after)},
    )


async def check_rate_limit(request: Request, key_id: str) -> None:
    """Take a token from the API key's bucket; `RateLimited` (429) when it is empty."""
    limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
    if limiter is None:
        return
    wait = await limiter.acquire(key_id)
    if wait > 0:
        metrics: Metrics = request.app.state.metrics
        metrics.rate_limited.inc()
        log.info("rate limited API key %s (retry in %.2f s)", key_id, wait)
        raise RateLimited(wait)


def make_rate_limiter(settings: Settings, metrics: Metrics) -> RateLimiter | None:
    """None when limits are off (`AVA_RATE_LIMIT_PER_SECOND=0`)."""
    if settings.rate_limit_per_second <= 0:
        return None
    if settings.redis_url:
        from storage.redis_limits import RedisRateLimiter

        return RedisRateLimiter(
            settings.redis_url,
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            on_error=lambda _exc: metrics.rate_limiter_errors.inc(),
        )
    return LocalRateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)


def install_operations(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Request ids and the access log, body limits, rate limiting, /metrics."""
    app.state.metrics = metrics
    app.state.limiter = make_rate_limiter(settings, metrics)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.include_router(metrics_router)
    app.add_middleware(JsonLimits)  # added first: inside BodyLimit, so it reads a capped body
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, on_reject=metrics.bodies_too_large.inc
    )
    app.add_middleware(RequestContext)  # added last: outermost

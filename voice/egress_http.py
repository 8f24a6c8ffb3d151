"""Outbound HTTP to tenant-supplied URLs: checked where it connects, bounded in what it reads.

`GuardedTransport` is an httpx transport whose connections are opened by a network backend that
resolves the host itself, checks every address it resolves to with the `EgressPolicy`
(`voice.egress`), and then connects to one of those checked addresses. The URL, the `Host`
header and TLS (SNI and certificate verification) keep using the host name, and the connection
pool stays keyed by it, but no second DNS lookup happens between the check and the connect: a
name that rebinds to 169.254.169.254 after passing the check cannot be followed there. A pooled
connection is reused only for the same scheme, host and port, so it was checked when opened.

Redirects are refused, not followed: `guarded_client` never follows them, and a 3xx answer is
reported as the error kind "redirect" (`error_kind`). A tenant's server answers at the URL the
tenant configured; following a `Location` would also turn a POST into a GET. (A client that did
follow them through this transport would still have each hop checked where it connects.)

`read_capped` streams a body and stops past a limit (`AVA_MAX_RESPONSE_BYTES`, 1 MB by default)
holding at most the limit plus one network read. `error_kind` turns any failure into a small
fixed vocabulary; that kind (or an HTTP status) is all a call record, a spoken line or an API
response may carry about a tenant's server — never its body or an exception's text, which
would let a tenant read the operator's network through its own call records.

    timeout  connect-error  egress-denied  response-too-large  invalid-response  invalid-url
    redirect  http-<status>  request-failed
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final, NamedTuple

import httpcore
import httpx

from voice.egress import EgressDenied, EgressPolicy, IPAddress

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ERROR_KINDS",
    "CappedResponse",
    "GuardedTransport",
    "Resolver",
    "ResponseTooLarge",
    "error_kind",
    "guarded_client",
    "post_capped",
    "read_capped",
    "system_resolver",
]

DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024
ERROR_KINDS: Final = frozenset(
    {
        "timeout",
        "connect-error",
        "egress-denied",
        "response-too-large",
        "invalid-response",
        "invalid-url",
        "redirect",
        "request-failed",
    }
)  # plus "http-<status>" for a non-2xx, non-3xx answer

# (host, port) → the addresses to connect to, in order. Injectable for tests (DNS rebinding).
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


class ResponseTooLarge(httpx.HTTPError):
    """A response body went past the limit; reading stopped there."""

    kind: Final = "response-too-large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body is over {limit} bytes")
        self.limit = limit


class _Refused(EgressDenied, httpx.ConnectError):
    """`EgressDenied` raised where httpx connects: also an `httpx.ConnectError`, so code that
    catches `httpx.HTTPError` around a request treats it as the failed request it is."""


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses `host` resolves to (getaddrinfo, off the loop), in the system's order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def _checked(
    policy: EgressPolicy, resolver: Resolver, host: str, port: int, seconds: float | None
) -> list[IPAddress]:
    """`host`'s addresses, every one of them allowed by `policy`. Raises `_Refused` if any is
    not (a name with one internal address among public ones is refused as a whole), and
    httpcore's connect errors for a name that does not resolve."""
    literal = _literal(host)
    if literal is not None:
        addresses: Sequence[IPAddress] = (literal,)
    else:
        try:
            async with asyncio.timeout(seconds):
                addresses = await resolver(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc
    if not addresses:
        raise httpcore.ConnectError(f"{host} has no address")
    for address in addresses:
        reason = policy.reason(host, address)
        if reason is not None:
            raise _Refused(host, address, reason)
    return list(addresses)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the resolve → check → connect-to-that-address step."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _checked(self.policy, self.resolver, host, port, timeout)
        failure: Exception | None = None
        for address in addresses:  # the next address when one refuses, as a browser would
            try:
                return await self.inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # addresses is never empty
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable from tenant URLs")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building the default context loads the CA bundle (~40 ms): once per process, not per call.
    return httpx.create_ssl_context()


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its exception mapping and response streams) over a connection
    pool whose connections `_GuardedBackend` opens."""

    def __init__(self, backend: _GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(verify=_tls(), trust_env=False, limits=limits)
        # httpx has no public hook for the network backend: its pool is replaced. Were that
        # attribute ever renamed, connections would silently go unchecked, so refuse instead.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("httpx's transport changed: the egress check cannot be installed")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_tls(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that only connects where `policy` allows.

    `resolver` replaces the system's DNS (tests). `inner`, when given, is used as is for
    sending (a test's `httpx.MockTransport`, say): the host is then resolved and checked before
    each request is handed to it, since that transport connects on its own. Without it, the
    check happens where each connection is opened, on the address connected to."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver | None = None,
        inner: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self.policy = policy
        self.resolver: Resolver = resolver or system_resolver
        self._precheck = inner is not None
        if inner is None:
            limits = httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_connections, 20),
            )
            inner = _PinnedTransport(_GuardedBackend(policy, self.resolver), limits)
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol("only http and https URLs", request=request)
        if self._precheck:
            timeout = request.extensions.get("timeout", {}).get("connect")
            try:
                await _checked(
                    self.policy, self.resolver, request.url.host, _port(request.url), timeout
                )
            except _Refused as exc:
                exc.request = request
                raise
            except httpcore.ConnectTimeout as exc:
                raise httpx.ConnectTimeout(str(exc), request=request) from exc
            except httpcore.ConnectError as exc:
                raise httpx.ConnectError(str(exc), request=request) from exc
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def guarded_client(
    policy: EgressPolicy,
    *,
    timeout_seconds: float,
    max_connections: int = 100,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for tenant URLs: `GuardedTransport`, no environment proxies or
    netrc (`trust_env=False`), no redirects, no compressed answers asked for, and
    `timeout_seconds` for each phase (connect, each read, each write, a pool slot).

    httpx's timeouts are per phase: a server trickling its answer would stay under them. The
    end-to-end deadline (`server.timeoutSeconds`) is the caller's; `post_capped` applies it.
    `transport` is `GuardedTransport`'s `inner` (tests)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(
            policy, resolver=resolver, inner=transport, max_connections=max_connections
        ),
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,
        trust_env=False,
        # Identity only: a small gzip body must not become a large one in memory.
        headers={"accept-encoding": "identity"},
    )


async def _bounded_chunks(response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """The body as sent, decoded without letting one read expand past `limit` + 1 bytes."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        async for chunk in response.aiter_raw():
            yield chunk
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise httpx.DecodingError(f"unsupported content-encoding {encoding!r}")
    # We asked for identity; a server that compresses anyway is decompressed in bounded steps
    # (zlib's max_length), so a small bomb cannot expand in one go. wbits 47: gzip or zlib.
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
    try:
        async for raw in response.aiter_raw():
            data = raw
            while data:
                out = inflater.decompress(data, limit + 1)
                data = inflater.unconsumed_tail
                if out:
                    yield out
                elif data:
                    break  # no progress: wait for more input
        tail = inflater.flush()
    except zlib.error as exc:
        raise httpx.DecodingError("the compressed body is corrupt") from exc
    if tail:
        yield tail


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed `response` (`client.stream(...)`, `send(..., stream=True)`).

    Raises ResponseTooLarge as soon as it is over `limit` bytes (a `Content-Length` over it:
    before reading anything); at most `limit` + one network read is held meanwhile. A
    response already read is only measured."""
    if response.is_stream_consumed:
        if len(response.content) > limit:
            raise ResponseTooLarge(limit)
        return response.content
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(limit)
    body = bytearray()
    async for chunk in _bounded_chunks(response, limit):
        if len(body) + len(chunk) > limit:
            raise ResponseTooLarge(limit)
        body += chunk
    return bytes(body)


class CappedResponse(NamedTuple):
    status: int
    body: bytes


async def post_capped(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    limit: int,
    timeout_seconds: float,
) -> CappedResponse:
    """POST `content` and read the answer, all within `timeout_seconds` (end to end, and as
    each phase's httpx timeout, whatever the client's default) and at most `limit` bytes.
    A 3xx is returned, not followed. Raises what `error_kind` maps: TimeoutError, httpx
    errors, EgressDenied, ResponseTooLarge."""
    async with asyncio.timeout(timeout_seconds):
        async with client.stream(
            "POST", url, content=content, headers=headers, timeout=timeout_seconds
        ) as response:
            body = await read_capped(response, limit)
            return CappedResponse(response.status_code, body)


def error_kind(failure: BaseException | int) -> str:
    """What a call record or API response may say about a failed request to a tenant's
    server: an HTTP status (`http-404`, 3xx: `redirect`) or a fixed kind for an exception —
    never its message."""
    if isinstance(failure, int):
        return "redirect" if 300 <= failure < 400 else f"http-{failure}"
    if isinstance(failure, EgressDenied):
        return EgressDenied.kind
    if isinstance(failure, ResponseTooLarge):
        return ResponseTooLarge.kind
    if isinstance(failure, httpx.HTTPStatusError):
        return error_kind(failure.response.status_code)
    if isinstance(failure, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(failure, httpx.TooManyRedirects):
        return "redirect"
    if isinstance(failure, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return "invalid-url"
    if isinstance(failure, httpx.NetworkError | httpcore.NetworkError):
        return "connect-error"  # refused, reset, closed mid-answer: the server is not there
    if isinstance(failure, httpx.ProtocolError | httpx.DecodingError | ValueError):
        return "invalid-response"  # not HTTP, a broken encoding, not JSON
    return "request-failed"

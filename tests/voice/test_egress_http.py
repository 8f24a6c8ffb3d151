"""The guarded transport against a real HTTP server on 127.0.0.1, with injected DNS answers;
capped reads; the fixed error kinds."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks.fakes.server import serve
from voice.egress import EgressDenied, EgressPolicy, IPAddress
from voice.egress_http import (
    ERROR_KINDS,
    GuardedTransport,
    ResponseTooLarge,
    error_kind,
    guarded_client,
    post_capped,
    read_capped,
)
from voice.errors import ProviderError
from voice.providers._http import status_error
from voice.providers.openai_llm import OpenAiLlm
from voice.types import ChatMessage

pytestmark = pytest.mark.timeout(30)

LOOPBACK = ipaddress.ip_address("127.0.0.1")
METADATA = ipaddress.ip_address("169.254.169.254")
CHUNK = 64 * 1024
MB = 1024 * 1024


@dataclass
class Server:
    base: str = ""
    port: int = 0
    hosts: list[str] = field(default_factory=list)  # the Host header of each request

    async def echo(self, request: Request) -> Response:
        self.hosts.append(request.headers["host"])
        # a fresh connection per request: each one goes through the resolver again
        return Response(b"ok", headers={"connection": "close"})

    async def redirect(self, request: Request) -> Response:
        self.hosts.append(request.headers["host"])
        return Response(status_code=302, headers={"location": f"{self.base}/echo"})

    async def big(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(4 * MB // CHUNK):
                yield b"x" * CHUNK

        return StreamingResponse(body())  # chunked: no Content-Length to refuse it early


@asynccontextmanager
async def server() -> AsyncIterator[Server]:
    state = Server()
    app = Starlette(
        routes=[
            Route("/echo", state.echo, methods=["GET", "POST"]),
            Route("/redirect", state.redirect, methods=["GET", "POST"]),
            Route("/big", state.big, methods=["GET", "POST"]),
        ]
    )
    async with serve(app) as base:
        state.base, state.port = base, int(base.rsplit(":", 1)[1])
        yield state


class Dns:
    """A resolver that answers from a script, one answer per lookup (the last one repeats)."""

    def __init__(self, *answers: Sequence[IPAddress]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_the_checked_address_is_the_one_connected_to() -> None:
    """DNS rebinding: the name resolves to an allowed address once, then to the metadata
    address. The first request reaches the allowed address (with the name in Host), the next
    connection's lookup gets the metadata address and is refused; nothing resolves twice."""
    dns = Dns([LOOPBACK], [METADATA])
    async with server() as srv:
        url = f"http://rebinding.example:{srv.port}/echo"
        async with guarded_client(EgressPolicy("127.0.0.1"), timeout_seconds=5, resolver=dns) as c:
            first = await c.get(url)
            assert first.status_code == 200 and first.content == b"ok"
            with pytest.raises(EgressDenied) as denied:
                await c.get(url)
    assert srv.hosts == [f"rebinding.example:{srv.port}"]
    assert dns.lookups == ["rebinding.example", "rebinding.example"]  # one per connection
    assert denied.value.address == METADATA and error_kind(denied.value) == "egress-denied"
    assert isinstance(denied.value, httpx.ConnectError)  # `except httpx.HTTPError` catches it


async def test_a_public_looking_name_for_the_metadata_address_is_refused() -> None:
    dns = Dns([METADATA])
    async with guarded_client(EgressPolicy(), timeout_seconds=5, resolver=dns) as c:
        with pytest.raises(EgressDenied) as denied:
            await c.post("https://api.tenant-hooks.example/vapi", content=b"{}")
    assert denied.value.reason == "metadata" and dns.lookups == ["api.tenant-hooks.example"]


async def test_one_internal_address_among_public_ones_refuses_the_name() -> None:
    public = ipaddress.ip_address("93.184.216.34")
    dns = Dns([public, ipaddress.ip_address("10.0.0.7")])
    async with guarded_client(EgressPolicy(), timeout_seconds=5, resolver=dns) as c:
        started = asyncio.get_running_loop().time()
        with pytest.raises(EgressDenied) as denied:
            await c.get("http://mixed.example/")
    assert denied.value.reason == "private"
    assert asyncio.get_running_loop().time() - started < 1  # refused before connecting anywhere


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0"]
)
async def test_address_literals_are_checked_without_dns(host: str) -> None:
    dns = Dns([ipaddress.ip_address("93.184.216.34")])
    async with server() as srv:
        async with guarded_client(EgressPolicy(), timeout_seconds=5, resolver=dns) as c:
            with pytest.raises(EgressDenied):
                await c.get(f"http://{host}:{srv.port}/echo")
    assert dns.lookups == [] and srv.hosts == []


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "localhost"])
async def test_odd_spellings_of_loopback_are_refused_by_what_they_resolve_to(host: str) -> None:
    async with server() as srv:
        async with guarded_client(EgressPolicy(), timeout_seconds=5) as c:
            with pytest.raises(EgressDenied) as denied:
                await c.get(f"http://{host}:{srv.port}/echo")
    assert denied.value.reason == "loopback" and srv.hosts == []


async def test_the_allow_list_and_dev_mode_let_loopback_through() -> None:
    async with server() as srv:
        for policy in (EgressPolicy("127.0.0.1"), EgressPolicy(allow_loopback=True)):
            async with guarded_client(policy, timeout_seconds=5) as c:
                assert (await c.get(f"{srv.base}/echo")).status_code == 200
        async with guarded_client(EgressPolicy("localhost"), timeout_seconds=5) as c:
            assert (await c.get(f"http://localhost:{srv.port}/echo")).status_code == 200
    assert len(srv.hosts) == 3


async def test_redirects_are_reported_not_followed() -> None:
    async with server() as srv:
        async with guarded_client(EgressPolicy("127.0.0.1"), timeout_seconds=5) as c:
            answer = await post_capped(
                c, f"{srv.base}/redirect", content=b"{}", headers={}, limit=MB, timeout_seconds=5
            )
    assert answer.status == 302 and error_kind(answer.status) == "redirect"
    assert len(srv.hosts) == 1  # the Location was not asked


async def test_a_custom_inner_transport_is_checked_before_each_request() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(200, content=b"ok")

    dns = Dns([METADATA], [ipaddress.ip_address("93.184.216.34")])
    transport = GuardedTransport(EgressPolicy(), resolver=dns, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as c:
        with pytest.raises(EgressDenied):
            await c.get("http://hooks.example/a")
        assert (await c.get("http://hooks.example/b")).content == b"ok"
    assert sent == ["http://hooks.example/b"]


class Counting(httpx.AsyncByteStream):
    """An endless body (a 200 MB answer, or more), counting what the reader pulls."""

    def __init__(self, chunk: bytes = b"x" * CHUNK) -> None:
        self.chunk = chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.pulled += len(self.chunk)
            yield self.chunk


async def test_a_huge_answer_is_cut_at_the_limit() -> None:
    body = Counting()
    response = httpx.Response(200, stream=body)
    with pytest.raises(ResponseTooLarge) as caught:
        await read_capped(response, MB)
    assert body.pulled <= MB + CHUNK  # the limit plus one read, not the whole body
    assert error_kind(caught.value) == "response-too-large"


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = Counting()
    response = httpx.Response(200, headers={"content-length": str(200 * MB)}, stream=body)
    with pytest.raises(ResponseTooLarge):
        await read_capped(response, MB)
    assert body.pulled == 0


class Sent(httpx.AsyncByteStream):
    """`data` as the network would deliver it, in reads of `size` bytes."""

    def __init__(self, data: bytes, size: int = 16 * 1024) -> None:
        self.data, self.size = data, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


async def test_a_compressed_answer_cannot_expand_past_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (50 * MB))  # ~50 kB on the wire
    assert len(bomb) < MB // 4
    gzipped = {"content-encoding": "gzip"}
    with pytest.raises(ResponseTooLarge):
        await read_capped(httpx.Response(200, headers=gzipped, stream=Sent(bomb)), MB)
    small = gzip.compress(b'{"results": []}')
    response = httpx.Response(200, headers=gzipped, stream=Sent(small, size=7))
    assert await read_capped(response, MB) == b'{"results": []}'


async def test_a_streamed_answer_over_the_limit_from_a_server() -> None:
    async with server() as srv:
        async with guarded_client(EgressPolicy("127.0.0.1"), timeout_seconds=5) as c:
            with pytest.raises(ResponseTooLarge):
                await post_capped(
                    c, f"{srv.base}/big", content=b"", headers={}, limit=MB, timeout_seconds=5
                )
            fine = await post_capped(
                c, f"{srv.base}/big", content=b"", headers={}, limit=8 * MB, timeout_seconds=5
            )
    assert fine.status == 200 and len(fine.body) == 4 * MB


def test_error_kinds_are_a_fixed_vocabulary() -> None:
    request = httpx.Request("POST", "http://x/")
    cases: list[tuple[BaseException | int, str]] = [
        (404, "http-404"),
        (500, "http-500"),
        (301, "redirect"),
        (EgressDenied("h", METADATA, "metadata"), "egress-denied"),
        (ResponseTooLarge(10), "response-too-large"),
        (TimeoutError(), "timeout"),
        (httpx.ReadTimeout("x", request=request), "timeout"),
        (httpx.ConnectError("[Errno 111] refused", request=request), "connect-error"),
        (httpx.ReadError("reset by 10.0.0.5:6379", request=request), "connect-error"),
        (httpx.RemoteProtocolError("-ERR unknown command", request=request), "invalid-response"),
        (ValueError("Expecting value"), "invalid-response"),
        (httpx.UnsupportedProtocol("file://", request=request), "invalid-url"),
        (RuntimeError("anything else"), "request-failed"),
    ]
    for failure, kind in cases:
        assert error_kind(failure) == kind
        assert kind in ERROR_KINDS or kind.startswith("http-")


async def test_a_custom_llm_at_a_refused_address_is_a_fixed_non_retryable_error() -> None:
    """The OpenAI SDK over a guarded client: the refusal surfaces as `egress-denied` in the
    ProviderError (what `providerErrors` records), with no address, and is not retried."""
    async with guarded_client(EgressPolicy(), timeout_seconds=5) as http:
        llm = OpenAiLlm("tenant-key", base_url="http://127.0.0.1:9/v1", http_client=http)
        with pytest.raises(ProviderError) as caught:
            async for _ in llm.stream([ChatMessage("user", "hi")]):
                pass
    assert str(caught.value).endswith("egress-denied") and "127.0.0.1" not in str(caught.value)
    assert not caught.value.retryable


def test_a_providers_error_body_is_logged_not_recorded() -> None:
    error = status_error("custom-llm", "first_token", 500, "psql: FATAL at db.internal:5432")
    assert "db.internal" not in str(error) and "HTTP 500" in str(error) and error.retryable

"""The HTTP edge against a live server: request ids, body size limits, 500s, /docs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import AssistantFactory, migrated_sqlite
from tests.control.conftest import ASSISTANT, Api, api_app, running_api

pytestmark = pytest.mark.timeout(60)

LIMIT = 4096


@pytest.fixture
async def api(tmp_path: Path, assistant_file: AssistantFactory) -> AsyncIterator[Api]:
    app = api_app(tmp_path, assistant_file, migrated_sqlite(tmp_path / "db"), max_body_bytes=LIMIT)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async with running_api(app) as running:
        yield running


async def test_request_id_is_echoed_when_valid_and_made_otherwise(api: Api) -> None:
    given = await api.a.get("/assistant", headers={"X-Request-Id": "lb-7f3a.2:9_x"})
    assert given.headers["x-request-id"] == "lb-7f3a.2:9_x"

    made = [await api.a.get("/assistant") for _ in range(2)]
    ids = [r.headers["x-request-id"] for r in made]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]

    for bad in ("x" * 129, "has space", "semi;colon", "<script>", "-leading-dash"):
        response = await api.a.get("/assistant", headers={"X-Request-Id": bad})
        assert response.status_code == 200
        assert response.headers["x-request-id"] != bad
        assert len(response.headers["x-request-id"]) == 32
    assert (await api.a.get("/assistant", headers={"X-Request-Id": "y" * 128})).headers[
        "x-request-id"
    ] == "y" * 128

    # Errors and unauthenticated requests carry one too.
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        denied = await anonymous.get("/assistant", headers={"X-Request-Id": "req-401"})
    assert denied.status_code == 401 and denied.headers["x-request-id"] == "req-401"
    missing = await api.a.get("/assistant/nope", headers={"X-Request-Id": "req-404"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "req-404"


async def test_an_unhandled_error_is_a_vapi_shaped_500_with_the_request_id(api: Api) -> None:
    response = await api.a.get("/boom", headers={"X-Request-Id": "req-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert response.json() == {
        "message": "internal server error",
        "error": "Internal Server Error",
        "statusCode": 500,
    }
    # The server is fine afterwards.
    assert (await api.a.get("/assistant")).status_code == 200


async def test_bodies_up_to_the_limit_are_accepted(api: Api) -> None:
    assistant = {**ASSISTANT, "metadata": {"pad": "x" * (LIMIT - 1000)}}
    body = json.dumps(assistant).encode()
    assert len(body) <= LIMIT
    response = await api.a.post(
        "/assistant", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_a_declared_oversized_body_is_refused_before_it_is_read(api: Api) -> None:
    """The raw socket sends headers only: the 413 must come without the body being sent."""
    host, port = urlsplit(api.base).hostname, urlsplit(api.base).port
    assert host is not None and port is not None
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                "POST /assistant HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {api.key_a}\r\n"
                "Content-Type: application/json\r\n"
                "X-Request-Id: req-413\r\n"
                f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
        # 50 MiB would not be worth reading to keep the connection: it is closed.
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert lines[0].startswith("HTTP/1.1 413")
    assert headers["x-request-id"] == "req-413"
    assert json.loads(body) == {
        "message": f"request body over {LIMIT} bytes",
        "error": "Request Entity Too Large",
        "statusCode": 413,
    }
    assert await api.stores.assistants.list(api.tenant_a) == []


async def test_a_body_a_little_over_is_read_off_so_the_client_sees_413(api: Api) -> None:
    body = json.dumps({**ASSISTANT, "metadata": {"pad": "x" * (3 * LIMIT)}}).encode()
    response = await api.a.post(
        "/assistant", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["message"] == f"request body over {LIMIT} bytes"
    assert "connection" not in response.headers  # kept open: the next request reuses it
    assert (await api.a.get("/assistant")).json() == []


async def test_a_streamed_oversized_body_is_cut_off_with_413(api: Api) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 64 KiB offered, no Content-Length (chunked)
            sent += 1024
            yield b" " * 1024

    response = await api.a.post(
        "/assistant", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["statusCode"] == 413
    assert "content-length" not in response.request.headers
    assert await api.stores.assistants.list(api.tenant_a) == []
    metrics = (await api.a.get("/metrics")).text
    assert "ava_request_body_too_large_total 1.0" in metrics


async def test_webhooks_are_size_limited_too(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base) as twilio:
        response = await twilio.post(
            "/twilio/voice", data={"CallSid": "CA1", "Junk": "x" * (2 * LIMIT)}
        )
    assert response.status_code == 413
    assert response.json()["message"] == f"request body over {LIMIT} bytes"


async def test_docs_and_openapi_list_the_api(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base) as browser:
        docs = await browser.get("/docs")
        spec = await browser.get("/openapi.json")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "/openapi.json" in docs.text and "swagger" in docs.text.lower()
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path, method in [
        ("/assistant", "post"),
        ("/assistant", "get"),
        ("/assistant/{assistant_id}", "patch"),
        ("/tool", "get"),
        ("/phone-number", "post"),
        ("/call", "get"),
        ("/call/{call_id}", "get"),
        ("/livez", "get"),
        ("/readyz", "get"),
    ]:
        assert method in paths.get(path, {}), (path, method, sorted(paths))
    assert "/metrics" not in paths  # an operator's endpoint, not the API's

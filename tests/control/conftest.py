"""A running AVA with two tenants and their API keys, on SQLite and on PostgreSQL."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from control.app import create_app
from control.stores import Stores
from storage import upgrade
from tests.conftest import (
    AssistantFactory,
    ScriptedEngines,
    migrated_sqlite,
    run_async,
    serve,
    settings_for,
)
from tests.storage.conftest import _truncate, postgres_database


@pytest.fixture(scope="session")
def api_postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        run_async(lambda: upgrade(url))
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path / "db")
    url: str = request.getfixturevalue("api_postgres_url")
    run_async(lambda: _truncate(url))
    return url


@dataclass
class Api:
    """The server's URL, its app, and a client per tenant (`a` and `b`), each with its key."""

    base: str
    app: FastAPI
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    tenant_a: str
    tenant_b: str
    key_a: str
    key_b: str

    @property
    def stores(self) -> Stores:
        stores: Stores = self.app.state.ava.stores
        return stores


@functools.cache
def loopback_tls() -> ssl.SSLContext:
    """One TLS context for the test clients, built once per process: httpx otherwise loads the
    CA bundle for every client (~0.1 s of CPU, two clients per `api` test), though these only
    ever speak plain HTTP to 127.0.0.1."""
    return ssl.create_default_context()


@asynccontextmanager
async def running_api(app: FastAPI) -> AsyncIterator[Api]:
    async with serve(app) as base:
        stores: Stores = app.state.ava.stores
        tenant_a = (await stores.tenants.create_tenant("Tenant A")).id
        tenant_b = (await stores.tenants.create_tenant("Tenant B")).id
        key_a = (await stores.tenants.create_api_key(tenant_a)).plaintext
        key_b = (await stores.tenants.create_api_key(tenant_b)).plaintext
        tls = loopback_tls()
        async with (
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {key_a}"}, verify=tls
            ) as a,
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {key_b}"}, verify=tls
            ) as b,
        ):
            yield Api(base, app, a, b, tenant_a, tenant_b, key_a, key_b)


def api_app(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    database_url: str,
    engines: ScriptedEngines | None = None,
    **settings: Any,
) -> FastAPI:
    config = settings_for(assistant_file(), tmp_path, database_url=database_url, **settings)
    return create_app(config, engines=engines or ScriptedEngines([], []))


@pytest.fixture
async def api(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Api]:
    async with running_api(api_app(tmp_path, assistant_file, database_url)) as running:
        yield running


ASSISTANT: dict[str, Any] = {
    "name": "Front desk",
    "firstMessage": "Hello, this is the front desk.",
    "model": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a receptionist."}],
        "temperature": 0.3,
    },
    "voice": {"provider": "11labs", "voiceId": "rachel"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
    "endCallPhrases": ["goodbye"],
    "metadata": {"team": "support"},
}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look up an order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    },
    "server": {"url": "https://example.com/tools"},
}
AUTH_TOKEN = "tenant-a-twilio-auth-token"
NUMBER: dict[str, Any] = {
    "provider": "twilio",
    "number": "+14155550100",
    "twilioAccountSid": "AC" + "a" * 32,
    "twilioAuthToken": AUTH_TOKEN,
    "name": "Main line",
}

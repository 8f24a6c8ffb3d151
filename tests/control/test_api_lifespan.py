"""The app's database lifecycle: refuse an unmigrated database, close orphaned calls."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from control.app import create_app
from storage import NotMigrated
from storage.orphans import NODE_DIED_REASON
from tests.conftest import AssistantFactory, ScriptedEngines, settings_for
from tests.control.conftest import running_api

pytestmark = pytest.mark.timeout(60)


async def test_unmigrated_database_refuses_to_start(
    tmp_path: Path, assistant_file: AssistantFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    engines = ScriptedEngines([], [])
    app = create_app(settings_for(assistant_file(), tmp_path, database_url=url), engines=engines)
    with pytest.raises(NotMigrated, match="run `ava db upgrade`"):
        async with app.router.lifespan_context(app):
            pass
    assert "refusing to start" in caplog.text


async def test_startup_closes_calls_a_dead_process_left_in_progress(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    settings = settings_for(assistant_file(), tmp_path, database_url=database_url)
    first = create_app(settings, engines=ScriptedEngines([], []))
    async with running_api(first) as api:
        tenant, key = api.tenant_a, api.key_a
        call = await api.stores.calls.create_call(
            tenant, type="inboundPhoneCall", status="in-progress"
        )
    # The first app stopped without ending the call, as a killed process would have.
    second = create_app(settings, engines=ScriptedEngines([], []))
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ava", headers={"Authorization": f"Bearer {key}"}
        ) as client:
            closed = (await client.get(f"/call/{call.id}")).json()
    assert closed["status"] == "ended" and closed["endedReason"] == NODE_DIED_REASON
    assert closed["endedAt"]

"""`GET/PATCH /org`: a tenant reads and sets its own recording retention, and only its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from storage.recordings import Recordings
from storage.tables import CallRow
from tests.conftest import AssistantFactory
from tests.control.conftest import Api, api_app, running_api
from tests.control.test_recordings_api import recorded_call


async def test_a_tenant_reads_and_sets_its_own_retention(api: Api) -> None:
    org = (await api.a.get("/org")).json()
    assert org["id"] == api.tenant_a and org["name"] == "Tenant A"
    assert org["recordingRetentionDays"] is None
    assert org["defaultRecordingRetentionDays"] is None  # the operator keeps them for ever
    patched = await api.a.patch("/org", json={"recordingRetentionDays": 30})
    assert patched.status_code == 200 and patched.json()["recordingRetentionDays"] == 30
    assert (await api.a.get(f"/org/{api.tenant_a}")).json()["recordingRetentionDays"] == 30
    recordings: Recordings = api.app.state.recordings
    assert await recordings.db.retention(api.tenant_a) == 30  # what the purge reads
    assert await recordings.db.retention(api.tenant_b) is None  # B's is untouched
    assert (await api.b.get("/org")).json()["recordingRetentionDays"] is None
    # Absent: unchanged; null: back to the operator's default.
    assert (await api.a.patch("/org", json={})).json()["recordingRetentionDays"] == 30
    cleared = await api.a.patch(f"/org/{api.tenant_a}", json={"recordingRetentionDays": None})
    assert cleared.status_code == 200 and cleared.json()["recordingRetentionDays"] is None
    assert await recordings.db.retention(api.tenant_a) is None


async def test_another_tenants_org_is_not_found(api: Api) -> None:
    assert (await api.a.get(f"/org/{api.tenant_b}")).status_code == 404
    refused = await api.a.patch(f"/org/{api.tenant_b}", json={"recordingRetentionDays": 1})
    assert refused.status_code == 404
    assert (await api.a.get("/org/no-such-org")).status_code == 404
    # Whatever the body: 404 before it is read, as for an id that exists nowhere.
    for body in ([1], {"name": "hijacked"}, None):
        assert (await api.a.patch(f"/org/{api.tenant_b}", json=body)).status_code == 404
    for body in ([1], None):
        refused = await api.a.patch("/org", json=body)
        assert refused.status_code == 422 and "JSON object" in refused.text
    assert (await api.b.get("/org")).json()["recordingRetentionDays"] is None
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        assert (await anonymous.get("/org")).status_code == 401
        assert (await anonymous.patch("/org", json={})).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"recordingRetentionDays": 0},
        {"recordingRetentionDays": -3},
        {"recordingRetentionDays": 36_501},
        {"recordingRetentionDays": "30"},
        {"recordingRetentionDays": 1.5},
        {"recordingRetentionDays": True},
        {"name": "Renamed"},  # the operator names tenants
        {"hipaaEnabled": True},  # a Vapi org field AVA does not take
    ],
)
async def test_invalid_updates_are_422_and_change_nothing(
    api: Api, body: dict[str, object]
) -> None:
    await api.a.patch("/org", json={"recordingRetentionDays": 7})
    refused = await api.a.patch("/org", json=body)
    assert refused.status_code == 422, refused.text
    field = next(iter(body))
    assert any(field in message for message in refused.json()["message"])
    assert (await api.a.get("/org")).json()["recordingRetentionDays"] == 7


async def test_the_purge_follows_the_retention_set_through_the_api(api: Api) -> None:
    await recorded_call(api, "call_old")
    async with api.app.state.ava.stores.engine.begin() as conn:
        ago = datetime.now(UTC) - timedelta(days=5)
        await conn.execute(update(CallRow).where(CallRow.id == "call_old").values(created_at=ago))
    recordings: Recordings = api.app.state.recordings
    await api.a.patch("/org", json={"recordingRetentionDays": 10})
    assert await recordings.purge() == 0
    await api.a.patch("/org", json={"recordingRetentionDays": 3})
    assert await recordings.purge() == 1
    assert (await api.a.get("/call/call_old/stereo-recording")).status_code == 404


async def test_the_operators_default_is_shown(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url, recording_retention_days=90)
    async with running_api(app) as api:
        org = (await api.a.get("/org")).json()
        assert org["defaultRecordingRetentionDays"] == 90 and org["recordingRetentionDays"] is None

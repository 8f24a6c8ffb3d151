"""The operator's side of recordings: restart recovery through the app, `ava recordings`."""

from __future__ import annotations

import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from control.app import create_app
from control.cli import main
from control.settings import Settings
from control.stores import open_stores
from storage.engine import make_sessionmaker
from storage.tables import CallRow
from tests.conftest import AssistantFactory, ScriptedEngines, run_async, serve, settings_for
from tests.storage.test_recordings import kill_mid_call


async def test_the_app_keeps_a_killed_calls_recording_at_startup(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    settings = settings_for(assistant_file(), tmp_path)
    stores = await open_stores(settings)
    tenant = (await stores.tenants.create_tenant("T")).id
    # The call the killed process was running (the orphan sweep will end it).
    await stores.calls.create_call(
        tenant, type="inboundPhoneCall", call_id="killed", status="in-progress"
    )
    await stores.close()
    spool = settings.data_dir / "recordings" / "spool"
    spool.mkdir(parents=True)
    kill_mid_call(spool / "killed.wav")
    app = create_app(settings, engines=ScriptedEngines([], []))
    async with serve(app):
        record = await app.state.ava.stores.calls.get_call(tenant, "killed", details=False)
    assert record is not None and record.status == "ended"
    assert record.recording is not None
    assert record.recording["state"] == "closed" and record.recording["recovered"] is True
    kept = settings.data_dir / "recordings" / record.recording["key"]
    with wave.open(str(kept), "rb") as w:
        assert w.getnframes() / w.getframerate() == 3.0 == record.recording["durationSeconds"]
    assert not list(spool.iterdir())


def test_the_operator_sets_retention_and_purges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AVA_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AVA_DATABASE_URL", raising=False)
    monkeypatch.delenv("AVA_RECORDING_RETENTION_DAYS", raising=False)
    monkeypatch.setenv("AVA_SECRET_KEY", "cli-test-secret-key")
    assert main(["db", "upgrade"]) == 0
    assert main(["tenant", "create", "Acme"]) == 0
    tenant = capsys.readouterr().out.strip()
    kept = tmp_path / "recordings" / tenant / "old.wav"

    async def old_recording() -> None:
        stores = await open_stores(Settings())
        await stores.calls.create_call(tenant, type="webCall", call_id="old")
        kept.parent.mkdir(parents=True)
        kept.write_bytes(b"RIFF")
        description = {"state": "closed", "store": "local", "key": f"{tenant}/old.wav"}
        async with make_sessionmaker(stores.engine)() as session, session.begin():
            await session.execute(
                update(CallRow)
                .where(CallRow.id == "old")
                .values(recording=description, created_at=datetime.now(UTC) - timedelta(days=3))
            )
        await stores.close()

    run_async(old_recording)
    assert main(["recordings", "purge"]) == 0
    assert capsys.readouterr().out.strip() == "0"  # no retention anywhere: kept for ever
    assert main(["recordings", "retention", tenant, "0"]) == 2
    assert main(["recordings", "retention", "no-such-tenant", "2"]) == 1
    assert main(["recordings", "retention", tenant, "2"]) == 0
    assert main(["recordings", "purge"]) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert not kept.exists()

"""Secrets that can't drift (issue 9, finding 8): the CLI and the server find the same key from
any directory, refuse a key the database was not set up with, refuse to run in production
without AVA_SECRET_KEY; stream tokens verify in every process; `server.headers` never shown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import text

from control import cli
from control.app import create_app
from control.server import DrainingServer
from control.settings import Settings
from storage.keys import SecretKeyMismatch
from tests.conftest import AssistantFactory, ScriptedEngines, migrated_sqlite, serve
from tests.control.conftest import TOOL, Api
from tests.control.test_twilio_calls import open_stream

pytestmark = pytest.mark.timeout(60)

KEY_1 = "the-key-this-database-was-set-up-with"
KEY_2 = "another-key-from-a-stale-env-file-0000"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AVA_*/Twilio settings from the environment running the tests."""
    for name in ("AVA_SECRET_KEY", "TWILIO_AUTH_TOKEN", "AVA_TWILIO_AUTH_TOKEN",
                 "AVA_DATABASE_URL", "AVA_DATA_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _in(monkeypatch: pytest.MonkeyPatch, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(directory)  # also: no .env of the repository is read
    return directory


def _settings(assistant: Path, database_url: str, **overrides: Any) -> Settings:
    return Settings(
        assistant_file=assistant,
        database_url=database_url,
        _env_file=None,  # type: ignore[call-arg]
        **overrides,
    )


async def _ava(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`ava argv…` (it runs its own event loop: in a thread); exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out.strip(), err


async def test_a_key_created_from_another_directory_authenticates(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Dev mode, no AVA_SECRET_KEY: the operator's quick start, run from two shells.
    assistant = assistant_file()
    url = migrated_sqlite(tmp_path / "data")
    clean_env.setenv("AVA_DATABASE_URL", url)
    _in(clean_env, tmp_path / "admin-shell")
    code, tenant, _ = await _ava(capsys, "tenant", "create", "Acme")
    assert code == 0
    code, key, _ = await _ava(capsys, "key", "create", "--tenant", tenant)
    assert code == 0 and key

    _in(clean_env, tmp_path / "server-shell")
    app = create_app(_settings(assistant, url), engines=ScriptedEngines([], []))
    async with (
        serve(app) as base,
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        response = await http.get("/assistant")
    assert response.status_code == 200, response.text
    assert not (tmp_path / "admin-shell" / "var").exists()


def test_serve_refuses_to_start_without_a_secret_key_outside_dev_mode(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[DrainingServer] = []
    clean_env.setattr(DrainingServer, "run", lambda self, *a, **k: started.append(self))
    clean_env.setenv("AVA_DATABASE_URL", migrated_sqlite(tmp_path / "data"))
    clean_env.setenv("TWILIO_AUTH_TOKEN", "operator-twilio-token")  # production mode
    _in(clean_env, tmp_path / "cwd")

    assert cli.main(["serve"]) != 0
    assert started == []  # refused before the app (and its models) was built
    err = capsys.readouterr().err
    assert "AVA_SECRET_KEY is not set" in err and "Set AVA_SECRET_KEY" in err


async def test_a_different_key_is_refused_by_the_cli_and_the_server(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assistant = assistant_file()
    url = migrated_sqlite(tmp_path / "data")
    clean_env.setenv("AVA_DATABASE_URL", url)
    _in(clean_env, tmp_path / "cwd")
    clean_env.setenv("AVA_SECRET_KEY", KEY_1)
    code, _, _ = await _ava(capsys, "db", "upgrade")  # records KEY_1's fingerprint
    assert code == 0
    code, tenant, _ = await _ava(capsys, "tenant", "create", "Acme")
    assert code == 0

    clean_env.setenv("AVA_SECRET_KEY", KEY_2)
    for argv in (
        ("key", "create", "--tenant", tenant),
        ("tenant", "create", "Other"),
        ("tenant", "list"),
        ("db", "upgrade"),
    ):
        code, out, err = await _ava(capsys, *argv)
        assert code == 1, argv
        assert out == "", argv  # in particular, no API key that could never authenticate
        assert "set up with a different AVA_SECRET_KEY" in err, argv
        assert "set AVA_SECRET_KEY to the key it was created with" in err, argv

    # `ava serve` says so before building anything; the app itself refuses too
    started: list[DrainingServer] = []
    clean_env.setattr(DrainingServer, "run", lambda self, *a, **k: started.append(self))
    code, _, err = await _ava(capsys, "serve")
    assert code == 1 and started == []
    assert "set up with a different AVA_SECRET_KEY" in err
    settings = _settings(assistant, url, secret_key=KEY_2)
    app = create_app(settings, engines=ScriptedEngines([], []))
    with pytest.raises(SecretKeyMismatch, match="different AVA_SECRET_KEY"):
        async with app.router.lifespan_context(app):
            pass

    # with the right key everything works as before
    clean_env.setenv("AVA_SECRET_KEY", KEY_1)
    code, key, _ = await _ava(capsys, "key", "create", "--tenant", tenant)
    assert code == 0 and key.startswith("ava_")


async def test_stream_tokens_verify_in_another_process_on_the_same_database(
    tmp_path: Path, assistant_file: AssistantFactory, clean_env: pytest.MonkeyPatch
) -> None:
    # Dev mode without AVA_SECRET_KEY, two servers on one database (from two directories): a
    # token the first issued in its TwiML opens a stream on the second.
    assistant = assistant_file()
    url = migrated_sqlite(tmp_path / "data")
    _in(clean_env, tmp_path / "one")
    first = create_app(_settings(assistant, url), engines=ScriptedEngines([], []))
    _in(clean_env, tmp_path / "two")
    second = create_app(_settings(assistant, url), engines=ScriptedEngines([], []))
    async with serve(first) as base_one, serve(second) as base_two:
        stream_url, line = await open_stream(base_one, call_sid="CA" + "5" * 32)
        port_one, port_two = base_one.rsplit(":", 1)[1], base_two.rsplit(":", 1)[1]
        on_second = stream_url.replace(f":{port_one}/", f":{port_two}/")
        assert on_second != stream_url
        async with websockets.connect(on_second) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))
            async with asyncio.timeout(10):
                while True:  # the greeting's audio: the stream was accepted
                    message = json.loads(await ws.recv())
                    if message.get("event") == "media":
                        break
            await ws.send(line.stop(1.0))


async def test_server_headers_are_masked_in_the_api_and_sealed_in_the_database(
    api: Api,
) -> None:
    credential = "Bearer tenant-a-crm-credential-31337"
    server = {"url": "https://hooks.example.com/a", "headers": {"Authorization": credential}}
    created = await api.a.post("/assistant", json={"name": "H", "server": server})
    assert created.status_code == 201, created.text
    tool = await api.a.post("/tool", json={**TOOL, "server": server})
    assert tool.status_code == 201, tool.text
    masked = {"url": server["url"], "headers": {"Authorization": "***"}}
    shown = [
        (await api.a.get(f"/assistant/{created.json()['id']}")).json(),
        (await api.a.get(f"/tool/{tool.json()['id']}")).json(),
        created.json(),
        tool.json(),
    ]
    assert [s["server"] for s in shown] == [masked] * 4
    assert credential not in json.dumps((await api.a.get("/assistant")).json())
    assert credential not in json.dumps((await api.a.get("/tool")).json())

    async with api.stores.engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT config FROM assistants UNION ALL SELECT config FROM tools")
            )
        ).all()
    raw = json.dumps([str(row[0]) for row in rows])
    assert "hooks.example.com" in raw and "Authorization" in raw
    assert "tenant-a-crm-credential" not in raw

    # PATCH with what GET showed: the stored value stays (calls still authenticate)
    patched = await api.a.patch(
        f"/assistant/{created.json()['id']}", json={"server": shown[0]["server"]}
    )
    assert patched.status_code == 200 and patched.json()["server"] == masked
    record = await api.stores.assistants.get(api.tenant_a, created.json()["id"])
    assert record is not None and record.config["server"]["headers"] == server["headers"]

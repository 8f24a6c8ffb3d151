"""The server key can't drift: the database records a fingerprint of the key it was set up with
and refuses another; dev mode keeps its generated key beside the SQLite file (0600), not in the
working directory; migration 0006 seals `server.headers` and adopts the key of an old database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from storage.crypto import SEALED, SecretBox
from storage.engine import make_engine, make_sessionmaker
from storage.keys import (
    SecretKeyMismatch,
    SecretKeyMissing,
    ServerKey,
    check_key,
    key_fingerprint,
    resolve_server_key,
)
from storage.migrate import current_revision, downgrade, head_revision, upgrade
from storage.resources import AssistantStore, PhoneNumberStore, ToolStore
from storage.tables import Base, ServerMetaRow
from tests.storage.conftest import SECRET, database_text

OTHER = "a-different-server-key-0123456789"
HEADER = "Bearer tenant-header-credential-42"
CALL_HEADER = "transient-assistant-header-77"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_database_refuses_a_key_it_was_not_set_up_with(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await check_key(engine, ServerKey(SECRET, "AVA_SECRET_KEY"))  # first use: recorded
        await check_key(engine, ServerKey(SECRET, "AVA_SECRET_KEY"))  # the same key: fine
        with pytest.raises(SecretKeyMismatch) as refused:
            await check_key(engine, ServerKey(OTHER, "AVA_SECRET_KEY"))
        message = str(refused.value)
        assert "different AVA_SECRET_KEY" in message
        assert key_fingerprint(SECRET)[:12] in message and key_fingerprint(OTHER)[:12] in message
        assert SECRET not in message and OTHER not in message

        async with engine.connect() as connection:
            stored = (await connection.execute(select(ServerMetaRow.value))).scalars().all()
        # a keyed derivation: neither the key nor a plain hash of it that a guess could test
        assert stored == [key_fingerprint(SECRET)]
        assert SECRET not in stored[0]
        assert stored[0] not in hashlib.sha256(SECRET.encode()).hexdigest()
    finally:
        await engine.dispose()


async def test_upgrade_records_the_key_and_refuses_another(empty_db_url: str) -> None:
    await upgrade(empty_db_url, secret_key=SECRET)
    with pytest.raises(SecretKeyMismatch, match="different AVA_SECRET_KEY"):
        await upgrade(empty_db_url, secret_key=OTHER)
    with pytest.raises(SecretKeyMismatch):
        await downgrade(empty_db_url, "0005", secret_key=OTHER)
    assert await current_revision(empty_db_url) == head_revision()
    engine = make_engine(empty_db_url)
    try:
        await check_key(engine, ServerKey(SECRET, "AVA_SECRET_KEY"))
        with pytest.raises(SecretKeyMismatch):
            await check_key(engine, ServerKey(OTHER, "AVA_SECRET_KEY"))
    finally:
        await engine.dispose()


async def _insert_rows_of_0005(url: str) -> None:
    """Rows as revisions 0002-0005 wrote them: secrets sealed, `server.headers` in clear."""
    box = SecretBox.from_secret(SECRET)
    now = datetime.now(UTC)
    stamps = {"created_at": now, "updated_at": now}
    server = {
        "url": "https://hooks.example.com/a",
        "secret": {SEALED: box.encrypt("hook-secret-1")},  # sealed by 0002
        "headers": {"Authorization": HEADER},
    }
    config = {"name": "Old", "server": server}
    tables = Base.metadata.tables
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tables["tenants"]).values(id="t1", name="A", created_at=now)
            )
            await connection.execute(
                insert(tables["assistants"]).values(
                    id="a1", tenant_id="t1", name="Old", config=config, **stamps
                )
            )
            await connection.execute(
                insert(tables["tools"]).values(
                    id="tool1", tenant_id="t1", type="function",
                    config={"type": "function", "server": server}, **stamps,
                )
            )  # fmt: skip
            credentials = box.encrypt_json({"account_sid": "AC1", "auth_token": "tok"})
            await connection.execute(
                insert(tables["phone_numbers"]).values(
                    id="p1", tenant_id="t1", number="+14155550123", provider="twilio",
                    twilio_account_sid="AC1", credentials_encrypted=credentials,
                    server=server, **stamps,
                )
            )  # fmt: skip
            # only 0005's columns: the ORM's row is the newest revision's
            transient = {"server": {"url": "https://t.example", "headers": {"X-Key": CALL_HEADER}}}
            await connection.execute(
                insert(tables["calls"]).values(
                    id="c1", tenant_id="t1", type="outboundPhoneCall", status="queued",
                    costs=[], metadata={"assistant": transient, "team": "x"}, **stamps,
                )
            )  # fmt: skip
    finally:
        await engine.dispose()


async def test_migration_0006_seals_headers_and_adopts_only_the_right_key(
    empty_db_url: str,
) -> None:
    await upgrade(empty_db_url, "0005")
    await _insert_rows_of_0005(empty_db_url)

    # no key, but headers to seal: refused, nothing changed
    with pytest.raises(RuntimeError, match="AVA_SECRET_KEY"):
        await upgrade(empty_db_url)
    # a key that did not seal the existing secrets is not adopted
    with pytest.raises(SecretKeyMismatch, match="sealed with a different key"):
        await upgrade(empty_db_url, secret_key=OTHER)
    assert await current_revision(empty_db_url) == "0005"

    await upgrade(empty_db_url, secret_key=SECRET)
    assert await current_revision(empty_db_url) == head_revision()
    engine = make_engine(empty_db_url)
    try:
        stored = await database_text(engine, empty_db_url)
        assert "hooks.example.com" in stored and "Authorization" in stored and "X-Key" in stored
        assert HEADER not in stored and CALL_HEADER not in stored
        with pytest.raises(SecretKeyMismatch):  # adopted: the fingerprint is recorded
            await check_key(engine, ServerKey(OTHER, "AVA_SECRET_KEY"))
        box = SecretBox.from_secret(SECRET)
        sessions = make_sessionmaker(engine)
        assistant = await AssistantStore(sessions, box).get("t1", "a1")
        assert assistant is not None
        assert assistant.config["server"]["headers"] == {"Authorization": HEADER}
        assert assistant.config["server"]["secret"] == "hook-secret-1"
        tool = await ToolStore(sessions, box).get("t1", "tool1")
        assert tool is not None and tool.config["server"]["headers"] == {"Authorization": HEADER}
        number = await PhoneNumberStore(sessions, box).get("t1", "p1")
        assert number is not None and number.server is not None
        assert number.server["headers"] == {"Authorization": HEADER}
    finally:
        await engine.dispose()

    # and back: 0005's format has the headers in clear and the secrets still sealed
    await downgrade(empty_db_url, "0005", secret_key=SECRET)
    engine = make_engine(empty_db_url)
    try:
        async with engine.connect() as connection:
            raw = (await connection.execute(text("SELECT server FROM phone_numbers"))).scalar_one()
        server = raw if isinstance(raw, dict) else json.loads(raw)
        assert server["headers"] == {"Authorization": HEADER}
        assert set(server["secret"]) == {SEALED}
    finally:
        await engine.dispose()


def test_the_dev_key_lives_beside_the_sqlite_file_whatever_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "data" / "ava.db"
    database.parent.mkdir()
    url = f"sqlite+aiosqlite:///{database}"
    keys = []
    for cwd in ("serve-here", "admin-there"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        keys.append(resolve_server_key("", url, dev_mode=True))
    assert keys[0].value == keys[1].value and len(keys[0].value) >= 32
    key_file = database.with_name("ava.db.key")
    assert key_file.read_text() == keys[0].value and str(key_file) in keys[0].source
    assert _mode(key_file) == 0o600
    assert not (tmp_path / "serve-here" / "var").exists()
    # AVA_SECRET_KEY wins; outside dev mode it is required, and PostgreSQL always needs it
    assert resolve_server_key("configured", url, dev_mode=False).value == "configured"
    with pytest.raises(SecretKeyMissing, match="AVA_SECRET_KEY is not set"):
        resolve_server_key("", url, dev_mode=False)
    with pytest.raises(SecretKeyMissing, match="AVA_SECRET_KEY"):
        resolve_server_key("", "postgresql+asyncpg://ava@127.0.0.1/ava", dev_mode=True)


def test_an_earlier_versions_dev_key_is_kept(tmp_path: Path) -> None:
    # Before, the dev key was data_dir/secret.key, beside the default data_dir/ava.db.
    (tmp_path / "secret.key").write_text("legacy-dev-key\n")
    url = f"sqlite+aiosqlite:///{tmp_path / 'ava.db'}"
    assert resolve_server_key("", url, dev_mode=True).value == "legacy-dev-key"
    assert (tmp_path / "ava.db.key").read_text() == "legacy-dev-key"


async def test_the_sqlite_files_are_private(tmp_path: Path) -> None:
    database = tmp_path / "ava.db"
    engine = make_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x TEXT)"))
            await connection.execute(text("INSERT INTO t VALUES ('transcript')"))
        async with engine.connect() as connection:  # WAL and shared memory open
            assert (await connection.execute(text("SELECT x FROM t"))).scalar_one()
            modes = {suffix: _mode(Path(f"{database}{suffix}")) for suffix in ("", "-wal", "-shm")}
        assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        await engine.dispose()


async def test_processes_opening_a_new_database_at_once_agree_on_one_key(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    keys = [ServerKey(SECRET if i % 2 == 0 else OTHER, "AVA_SECRET_KEY") for i in range(4)]
    try:
        results = await asyncio.gather(
            *(check_key(engine, key) for engine, key in zip(engines, keys, strict=True)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, SecretKeyMismatch)]
        assert len(refused) == 2 and results.count(None) == 2, results
        winner = keys[results.index(None)]
        for engine in engines:  # from now on only the recorded key opens it
            await check_key(engine, winner)
    finally:
        for engine in engines:
            await engine.dispose()

"""API keys: Bearer auth, 401s in Vapi's error shape, revocation, hashing at rest."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from control.cli import main
from storage import head_revision
from tests.control.conftest import Api
from tests.storage.conftest import database_text

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer ava_000000000000_notarealkey"},
        {"Authorization": "Bearer something-else"},
    ],
    ids=["missing", "empty", "basic", "unknown", "malformed"],
)
async def test_bad_keys_get_401_json(api: Api, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        for path in ("/assistant", "/tool", "/phone-number", "/call", "/call/x", "/assistant/x"):
            response = await client.get(path)
            assert response.status_code == 401, path
            body = response.json()
            assert body["statusCode"] == 401 and body["error"] == "Unauthorized"
            assert "API key" in body["message"]


async def test_revoked_key_is_refused(api: Api) -> None:
    assert (await api.a.get("/assistant")).status_code == 200
    stores = api.stores
    [key] = await stores.tenants.list_keys(api.tenant_a)
    assert await stores.tenants.revoke_key(api.tenant_a, key.id)
    response = await api.a.get("/assistant")
    assert response.status_code == 401
    assert response.json()["message"] == "invalid or revoked API key"
    assert (await api.b.get("/assistant")).status_code == 200


async def test_keys_are_stored_only_hashed(api: Api, database_url: str) -> None:
    text = await database_text(api.stores.engine, database_url)
    for key in (api.key_a, api.key_b):
        secret = key.rsplit("_", 1)[1]
        assert key not in text and secret not in text


def test_cli_creates_tenant_and_key_then_revokes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the work tree
    monkeypatch.setenv("AVA_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AVA_DATABASE_URL", raising=False)
    monkeypatch.delenv("AVA_SECRET_KEY", raising=False)
    assert main(["tenant", "create", "Acme"]) == 1
    assert "ava db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "current"]) == 0
    assert capsys.readouterr().out.strip() == head_revision()
    assert main(["tenant", "create", "Acme"]) == 0
    tenant = capsys.readouterr().out.strip()
    assert main(["key", "create", "--tenant", tenant, "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("ava_")
    assert main(["key", "list", "--tenant", tenant]) == 0
    listed = capsys.readouterr().out
    assert "ci" in listed and "active" in listed and key not in listed
    key_id = listed.split("\t", 1)[0]
    assert main(["key", "revoke", "--tenant", tenant, key_id]) == 0
    assert main(["key", "revoke", "--tenant", tenant, key_id]) == 1
    assert main(["key", "create", "--tenant", "no-such-tenant"]) == 1

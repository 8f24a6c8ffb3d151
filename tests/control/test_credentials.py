"""`/credential` (Vapi's provider credentials) and the assistant checks that go with it: sealed at
rest, never answered, one tenant's invisible to another; providers AVA cannot run refused when
an assistant is saved, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from storage.tables import CredentialRow
from tests.control.conftest import Api

KEY = "sk-tenant-a-very-secret-key"
OTHER_FIELD = "region-secret-value"


def assert_no_secret(text: str) -> None:
    assert KEY not in text and "apiKey" not in text and OTHER_FIELD not in text


async def test_credential_crud_never_answers_the_key(api: Api) -> None:
    body = {"provider": "openai", "apiKey": KEY, "name": "prod", "region": OTHER_FIELD}
    created = await api.a.post("/credential", json=body)
    assert created.status_code == 201, created.text
    assert_no_secret(created.text)
    credential = created.json()
    assert set(credential) == {"id", "orgId", "provider", "name", "createdAt", "updatedAt"}
    assert (credential["orgId"], credential["provider"], credential["name"]) == (
        api.tenant_a,
        "openai",
        "prod",
    )
    path = f"/credential/{credential['id']}"

    listed = await api.a.get("/credential")
    assert [c["id"] for c in listed.json()] == [credential["id"]]
    fetched = await api.a.get(path)
    assert fetched.json() == credential
    for response in (listed, fetched):
        assert_no_secret(response.text)

    renamed = await api.a.patch(path, json={"name": "renamed"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert_no_secret(renamed.text)
    # Renaming keeps the key and the other fields; a new key replaces only the key.
    (opened,) = await api.stores.credentials.secrets(api.tenant_a)
    assert (opened.api_key, dict(opened.fields)) == (KEY, {"region": OTHER_FIELD})
    rekeyed = await api.a.patch(path, json={"apiKey": "sk-new"})
    assert rekeyed.status_code == 200
    (opened,) = await api.stores.credentials.secrets(api.tenant_a)
    assert (opened.api_key, dict(opened.fields)) == ("sk-new", {"region": OTHER_FIELD})
    # KEY's repr: a logged credential shows no secret
    assert "sk-new" not in repr(opened) and OTHER_FIELD not in repr(opened)

    changed = await api.a.patch(path, json={"provider": "groq"})
    assert changed.status_code == 422 and "provider" in changed.text

    deleted = await api.a.delete(path)
    assert deleted.status_code == 200 and deleted.json()["id"] == credential["id"]
    assert (await api.a.get(path)).status_code == 404
    assert (await api.a.get("/credential")).json() == []


async def test_credentials_are_sealed_at_rest(api: Api) -> None:
    created = await api.a.post("/credential", json={"provider": "deepgram", "apiKey": KEY})
    sessions = api.stores.credentials._sessions
    async with sessions() as session:
        row = await session.scalar(select(CredentialRow))
    assert row is not None and row.tenant_id == api.tenant_a
    assert row.id == created.json()["id"] and row.provider == "deepgram"
    assert KEY not in row.secret_encrypted


async def test_another_tenants_credential_is_not_found(api: Api) -> None:
    created = await api.a.post("/credential", json={"provider": "groq", "apiKey": KEY})
    path = f"/credential/{created.json()['id']}"
    for response in (
        await api.b.get(path),
        await api.b.patch(path, json={"apiKey": "stolen", "provider": "nope"}),
        await api.b.delete(path),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["message"] == "credential not found"
    assert (await api.b.get("/credential")).json() == []
    assert await api.stores.credentials.secrets(api.tenant_b) == []
    (still,) = await api.stores.credentials.secrets(api.tenant_a)
    assert still.api_key == KEY  # B's PATCH changed nothing
    assert (await api.a.get(path)).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "anthropic", "apiKey": KEY}, "provider"),
        ({"apiKey": KEY}, "provider"),
        ({"provider": "openai"}, "apiKey"),
        ({"provider": "openai", "apiKey": ""}, "apiKey"),
        ({"provider": "openai", "apiKey": "k" * 5000}, "apiKey"),
        ({"provider": "openai", "apiKey": KEY, "name": "n" * 201}, "name"),
        ({"provider": "openai", "apiKey": KEY, "nested": {"a": [1]}}, "nested"),
        ({"provider": "openai", "apiKey": KEY, "long": "x" * 3000}, "long"),
    ],
)
async def test_invalid_credentials_are_refused(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.a.post("/credential", json=body)
    assert response.status_code == 422, response.text
    assert any(m.startswith(f"{field}:") for m in response.json()["message"]), response.text
    assert (await api.a.get("/credential")).json() == []


@pytest.mark.parametrize(
    ("assistant", "message"),
    [
        (
            {"transcriber": {"provider": "openai"}},
            "transcriber.provider: 'openai' is not supported",
        ),
        (
            {
                "transcriber": {
                    "provider": "deepgram",
                    "fallbackPlan": {"transcribers": [{"provider": "openai"}]},
                }
            },
            "transcriber.fallbackPlan.transcribers[0].provider: 'openai' is not supported",
        ),
        (
            {
                "voice": {
                    "provider": "openai",
                    "voiceId": "alloy",
                    "fallbackPlan": {"voices": [{"provider": "cartesia", "voiceId": "x"}]},
                }
            },
            "voice.fallbackPlan.voices[0]",
        ),
        (
            {"model": {"provider": "openai", "model": "m", "fallbackModels": [{"provider": "x"}]}},
            "model.fallbackModels[0]",
        ),
        (
            {
                "model": {
                    "provider": "openai",
                    "model": "m",
                    "fallbackModels": [{"provider": "custom-llm"}],
                }
            },  # fmt: skip
            "model.fallbackModels[0].url: required for provider 'custom-llm'",
        ),
        ({"model": {"provider": "custom-llm", "model": "m"}}, "model.url: required"),
        (
            {"model": {"provider": "openai", "model": "m", "credentialId": "nope"}},
            "model.credentialId: credential nope not found",
        ),
        ({"credentials": [{"provider": "openai", "apiKey": KEY}]}, "credentials: "),
    ],
)
async def test_assistants_with_providers_ava_cannot_run_are_refused(
    api: Api, assistant: dict[str, Any], message: str
) -> None:
    created = await api.a.post("/assistant", json=assistant)
    assert created.status_code == 422, created.text
    assert any(message in m for m in created.json()["message"]), created.text
    assert KEY not in created.text
    assert (await api.a.get("/assistant")).json() == []
    # PATCH is checked the same way, and leaves the stored assistant as it was.
    stored = (await api.a.post("/assistant", json={"name": "ok"})).json()
    patched = await api.a.patch(f"/assistant/{stored['id']}", json=assistant)
    assert patched.status_code == 422, patched.text
    assert any(message in m for m in patched.json()["message"]), patched.text
    assert (await api.a.get(f"/assistant/{stored['id']}")).json() == stored


async def test_an_assistant_names_its_tenants_credential_only(api: Api) -> None:
    credential = await api.a.post("/credential", json={"provider": "openai", "apiKey": KEY})
    model = {"provider": "openai", "model": "gpt-4o-mini", "credentialId": credential.json()["id"]}
    assert (await api.b.post("/assistant", json={"model": model})).status_code == 422
    voice = {"provider": "11labs", "voiceId": "v", "credentialId": credential.json()["id"]}
    wrong = await api.a.post("/assistant", json={"voice": voice})
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["message"] == [
        f"voice.credentialId: credential {voice['credentialId']} is for 'openai'"
    ]
    created = await api.a.post("/assistant", json={"model": model})
    assert created.status_code == 201, created.text
    for response in (created, await api.a.get("/assistant"), await api.a.get("/credential")):
        assert KEY not in response.text and "apiKey" not in response.text


async def test_a_calls_transient_assistant_is_checked_too(api: Api) -> None:
    body = {
        "assistant": {"transcriber": {"provider": "openai"}},
        "phoneNumberId": "any",
        "customer": {"number": "+14155550123"},
    }
    response = await api.a.post("/call", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"] == [
        "assistant.transcriber.provider: 'openai' is not supported"
    ]
    assert (await api.a.get("/call")).json() == []

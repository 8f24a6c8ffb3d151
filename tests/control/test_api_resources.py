"""CRUD for /assistant, /tool and /phone-number in Vapi's shapes, and the 422s that name fields."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, TOOL, Api
from tests.storage.conftest import database_text

pytestmark = pytest.mark.timeout(60)

STAMPS = {"id", "orgId", "createdAt", "updatedAt"}


async def test_assistant_crud(api: Api) -> None:
    created = await api.a.post("/assistant", json=ASSISTANT)
    assert created.status_code == 201, created.text
    body = created.json()
    assert STAMPS <= set(body) and body["orgId"] == api.tenant_a
    assert body["createdAt"].endswith("Z")
    assert body["model"]["provider"] == "openai" and body["model"]["temperature"] == 0.3
    assert body["voice"]["voiceId"] == "rachel" and body["metadata"] == {"team": "support"}
    assistant_id = body["id"]

    fetched = (await api.a.get(f"/assistant/{assistant_id}")).json()
    assert fetched == body
    assert [a["id"] for a in (await api.a.get("/assistant")).json()] == [assistant_id]

    patched = await api.a.patch(
        f"/assistant/{assistant_id}", json={"firstMessage": "Hi!", "maxDurationSeconds": 120}
    )
    assert patched.status_code == 200, patched.text
    after = patched.json()
    assert after["firstMessage"] == "Hi!" and after["maxDurationSeconds"] == 120
    assert after["model"] == body["model"]  # PATCH replaces only the fields it names
    assert after["createdAt"] == body["createdAt"] and after["updatedAt"] >= body["updatedAt"]

    deleted = await api.a.delete(f"/assistant/{assistant_id}")
    assert deleted.status_code == 200 and deleted.json()["id"] == assistant_id
    gone = await api.a.get(f"/assistant/{assistant_id}")
    assert gone.status_code == 404
    assert gone.json() == {
        "message": "assistant not found",
        "error": "Not Found",
        "statusCode": 404,
    }
    assert (await api.a.delete(f"/assistant/{assistant_id}")).status_code == 404


async def test_legacy_server_url_is_accepted(api: Api) -> None:
    body = {**ASSISTANT, "serverUrl": "https://example.com/hook", "serverUrlSecret": "s3cret"}
    created = await api.a.post("/assistant", json=body)
    assert created.status_code == 201, created.text
    # the secret is write-only (see test_webhook_secrets_are_write_only_and_encrypted)
    assert created.json()["server"] == {"url": "https://example.com/hook"}
    record = await api.stores.assistants.get(api.tenant_a, created.json()["id"])
    assert record is not None and record.assistant().server == {
        "url": "https://example.com/hook",
        "secret": "s3cret",
    }


async def test_webhook_secrets_are_write_only_and_encrypted(api: Api, database_url: str) -> None:
    """Vapi never returns a credential: `server.secret` is accepted, used, and never shown."""
    secrets = ["assistant-hook-s3cret", "tool-hook-s3cret", "number-hook-s3cret"]
    hook = {"url": "https://hooks.example.com/a", "secret": secrets[0], "timeoutSeconds": 5}
    tool = {**TOOL, "server": {"url": "https://tools.example.com", "secret": secrets[1]}}
    made_tool = await api.a.post("/tool", json=tool)
    assert made_tool.status_code == 201, made_tool.text
    assistant = {**ASSISTANT, "server": hook}
    assistant["model"] = {**ASSISTANT["model"], "toolIds": [made_tool.json()["id"]]}
    made = await api.a.post("/assistant", json=assistant)
    assert made.status_code == 201, made.text
    assert made.json()["server"] == {"url": hook["url"], "timeoutSeconds": 5}
    number = await api.a.post(
        "/phone-number",
        json={**NUMBER, "server": {"url": "https://hooks.example.com/n", "secret": secrets[2]}},
    )
    assert number.status_code == 201, number.text
    # echoing a GET back (no secret in it) keeps the secret; the URL is unchanged
    shown = (await api.a.get(f"/assistant/{made.json()['id']}")).json()
    patched = await api.a.patch(f"/assistant/{shown['id']}", json={"server": shown["server"]})
    assert patched.status_code == 200, patched.text
    record = await api.stores.assistants.get(api.tenant_a, shown["id"])
    assert record is not None and record.config["server"]["secret"] == secrets[0]

    responses = [made_tool, made, number, patched]
    responses += [await api.a.get(path) for path in ("/assistant", "/tool", "/phone-number")]
    for response in responses:
        assert not [s for s in secrets if s in response.text], response.text
        assert '"secret"' not in response.text
    text = await database_text(api.stores.engine, database_url)
    assert "hooks.example.com" in text and not [s for s in secrets if s in text]


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(ASSISTANT)
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    target[last] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("model.provider", "no-such-llm", "model.provider"),
        ("voice.provider", "no-such-voice", "voice.provider"),
        ("transcriber.provider", "no-such-stt", "transcriber.provider"),
        ("maxDurationSeconds", 5, "maxDurationSeconds"),
        ("firstMessageMode", "shout", "firstMessageMode"),
        ("name", "x" * 41, "name"),
        ("silenceTimeoutSeconds", "soon", "silenceTimeoutSeconds"),
    ],
)
async def test_invalid_assistant_422_names_the_field(
    api: Api, path: str, value: Any, field: str
) -> None:
    response = await api.a.post("/assistant", json=_with(path, value))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["statusCode"] == 422 and body["error"] == "Unprocessable Entity"
    assert any(message.startswith(f"{field}: ") for message in body["message"]), body
    assert (await api.a.get("/assistant")).json() == []


async def test_invalid_patch_changes_nothing(api: Api) -> None:
    created = (await api.a.post("/assistant", json=ASSISTANT)).json()
    response = await api.a.patch(f"/assistant/{created['id']}", json={"model": {"provider": "x"}})
    assert response.status_code == 422
    assert response.json()["message"][0].startswith("model.provider: ")
    assert (await api.a.get(f"/assistant/{created['id']}")).json() == created


async def test_non_object_body_is_422(api: Api) -> None:
    response = await api.a.post("/assistant", json=[1, 2])
    assert response.status_code == 422
    assert response.json()["statusCode"] == 422


async def test_tool_crud_and_tool_ids(api: Api) -> None:
    created = await api.a.post("/tool", json=TOOL)
    assert created.status_code == 201, created.text
    tool = created.json()
    assert STAMPS <= set(tool) and tool["type"] == "function" and tool["orgId"] == api.tenant_a
    assert (await api.a.get(f"/tool/{tool['id']}")).json() == tool
    assert [t["id"] for t in (await api.a.get("/tool")).json()] == [tool["id"]]
    patched = await api.a.patch(f"/tool/{tool['id']}", json={"async": True})
    assert patched.status_code == 200 and patched.json()["async"] is True

    with_tool = _with("model.toolIds", [tool["id"]])
    assistant = await api.a.post("/assistant", json=with_tool)
    assert assistant.status_code == 201 and assistant.json()["model"]["toolIds"] == [tool["id"]]
    missing = await api.a.post("/assistant", json=_with("model.toolIds", ["nope"]))
    assert missing.status_code == 422
    assert missing.json()["message"] == ["model.toolIds: tool nope not found"]

    no_type = await api.a.post("/tool", json={"function": {"name": "f"}})
    assert no_type.status_code == 422 and no_type.json()["message"][0].startswith("type: ")
    bad_patch = await api.a.patch(f"/tool/{tool['id']}", json={"type": ""})
    assert bad_patch.status_code == 422

    assert (await api.a.delete(f"/tool/{tool['id']}")).status_code == 200
    assert (await api.a.get(f"/tool/{tool['id']}")).status_code == 404


async def test_phone_number_crud_never_returns_secrets(api: Api, database_url: str) -> None:
    assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()
    created = await api.a.post(
        "/phone-number",
        json={**NUMBER, "assistantId": assistant["id"], "server": {"url": "https://x.test"}},
    )
    assert created.status_code == 201, created.text
    number = created.json()
    assert STAMPS <= set(number) and number["orgId"] == api.tenant_a
    assert number["number"] == NUMBER["number"] and number["provider"] == "twilio"
    assert number["assistantId"] == assistant["id"] and number["status"] == "active"
    assert number["twilioAccountSid"] == NUMBER["twilioAccountSid"]
    listed = (await api.a.get("/phone-number")).json()
    fetched = (await api.a.get(f"/phone-number/{number['id']}")).json()
    assert listed == [fetched] and fetched == number

    patched = await api.a.patch(
        f"/phone-number/{number['id']}",
        json={"name": "Support", "assistantId": None, "twilioAuthToken": "rotated-token"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Support" and "assistantId" not in patched.json()
    credentials = await api.stores.phone_numbers.credentials(api.tenant_a, number["id"])
    assert credentials is not None and credentials.auth_token == "rotated-token"

    for response in (created, patched):
        assert AUTH_TOKEN not in response.text and "rotated-token" not in response.text
    text = await database_text(api.stores.engine, database_url)
    assert AUTH_TOKEN not in text and "rotated-token" not in text

    assert (await api.a.delete(f"/phone-number/{number['id']}")).status_code == 200
    assert (await api.a.get("/phone-number")).json() == []


async def test_phone_number_api_key_import(api: Api) -> None:
    body = {k: v for k, v in NUMBER.items() if k != "twilioAuthToken"}
    body |= {"twilioApiKey": "SK" + "1" * 32, "twilioApiSecret": "shh"}
    # The auth token too: Twilio signs the number's calls with it (issue 9).
    without_token = await api.a.post("/phone-number", json=body)
    assert without_token.status_code == 422
    assert without_token.json()["message"][0].startswith("twilioAuthToken:")
    created = await api.a.post("/phone-number", json={**body, "twilioAuthToken": AUTH_TOKEN})
    assert created.status_code == 201, created.text
    assert "shh" not in created.text and AUTH_TOKEN not in created.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"number": "4155550100"}, "number"),
        ({"number": None}, "number"),
        ({"twilioAuthToken": None}, "twilioAuthToken"),
        ({"twilioAccountSid": None}, "twilioAccountSid"),
        ({"assistantId": "no-such-assistant"}, "assistantId"),
        ({"provider": "vonage"}, "provider"),
    ],
)
async def test_invalid_phone_number_422(api: Api, change: dict[str, Any], field: str) -> None:
    response = await api.a.post("/phone-number", json={**NUMBER, **change})
    assert response.status_code == 422, response.text
    assert any(m.startswith(f"{field}: ") for m in response.json()["message"])
    assert (await api.a.get("/phone-number")).json() == []


async def test_a_number_is_imported_once(api: Api) -> None:
    assert (await api.a.post("/phone-number", json=NUMBER)).status_code == 201
    again = await api.b.post("/phone-number", json=NUMBER)
    assert again.status_code == 409
    assert (await api.b.get("/phone-number")).json() == []

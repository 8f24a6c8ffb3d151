"""Tenant isolation: tenant B's key on every endpoint, against tenant A's objects.

Every by-id endpoint answers 404 exactly as for an id that never existed (never 403, which would
confirm the id exists), and nothing of A's changes. Lists and filters show B none of A's objects.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.control.conftest import ASSISTANT, NUMBER, TOOL, Api

pytestmark = pytest.mark.timeout(60)


async def _a_objects(api: Api) -> dict[str, str]:
    tool = (await api.a.post("/tool", json=TOOL)).json()["id"]
    body = {**ASSISTANT, "model": {**ASSISTANT["model"], "toolIds": [tool]}}
    assistant = (await api.a.post("/assistant", json=body)).json()["id"]
    number = (await api.a.post("/phone-number", json={**NUMBER, "assistantId": assistant})).json()
    call = await api.stores.calls.create_call(
        api.tenant_a,
        type="inboundPhoneCall",
        assistant_id=assistant,
        phone_number_id=number["id"],
    )
    return {"assistant": assistant, "tool": tool, "phone-number": number["id"], "call": call.id}


async def _snapshot(api: Api, ids: dict[str, str]) -> dict[str, Any]:
    return {kind: (await api.a.get(f"/{kind}/{id}")).json() for kind, id in ids.items()}


PATCHES: dict[str, dict[str, Any]] = {
    "assistant": {"name": "hijacked"},
    "tool": {"async": True},
    "phone-number": {"name": "hijacked"},
}


async def test_other_tenants_objects_are_404_and_unchanged(api: Api) -> None:
    ids = await _a_objects(api)
    before = await _snapshot(api, ids)
    requests: list[tuple[str, str, dict[str, Any] | None]] = []
    for kind, id in ids.items():
        requests.append(("GET", f"/{kind}/{id}", None))
        if kind in PATCHES:
            requests.append(("PATCH", f"/{kind}/{id}", PATCHES[kind]))
            # An invalid body too: validation must not run (and answer 422) before the 404.
            requests.append(("PATCH", f"/{kind}/{id}", {"model": {"provider": "x"}, "type": ""}))
            requests.append(("DELETE", f"/{kind}/{id}", None))
    call = ids["call"]
    requests += [
        ("POST", f"/call/{call}/control", {"type": "end-call"}),
        ("POST", f"/call/{call}/control", {"type": "say", "content": "hijacked"}),
        ("POST", f"/call/{call}/control", {"no": "type"}),  # 404 before the body's 422
        ("DELETE", f"/call/{call}", None),
    ]
    for method, path, body in requests:
        theirs = await api.b.request(method, path, json=body)
        kind, id = path.split("/")[1:3]
        nowhere = await api.b.request(method, path.replace(id, "no-such-id"), json=body)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json() == nowhere.json(), (method, path)
    assert await _snapshot(api, ids) == before
    assert before["call"]["status"] == "queued"  # so end-call and DELETE would have acted


async def test_calls_cannot_be_placed_with_other_tenants_objects(api: Api) -> None:
    ids = await _a_objects(api)
    own_assistant = (await api.b.post("/assistant", json=ASSISTANT)).json()["id"]
    own_number = {**NUMBER, "number": "+14155550197"}
    own_number_id = (await api.b.post("/phone-number", json=own_number)).json()["id"]
    customer = {"number": "+15557654321"}
    for body, field in (
        ({"assistantId": ids["assistant"], "phoneNumberId": own_number_id}, "assistantId"),
        ({"assistantId": own_assistant, "phoneNumberId": ids["phone-number"]}, "phoneNumberId"),
    ):
        placed = await api.b.post("/call", json={**body, "customer": customer})
        assert placed.status_code == 422, placed.text
        assert placed.json()["message"][0].startswith(field)
    assert (await api.b.get("/call")).json() == []
    assert len((await api.a.get("/call")).json()) == 1


async def test_lists_and_filters_show_only_own_objects(api: Api) -> None:
    ids = await _a_objects(api)
    for kind in ("assistant", "tool", "phone-number", "call"):
        assert (await api.b.get(f"/{kind}")).json() == [], kind
        assert len((await api.a.get(f"/{kind}")).json()) == 1, kind
    for key, value in (("assistantId", ids["assistant"]), ("phoneNumberId", ids["phone-number"])):
        assert (await api.b.get("/call", params={key: value})).json() == []
        assert len((await api.a.get("/call", params={key: value})).json()) == 1


async def test_references_to_other_tenants_objects_are_refused(api: Api) -> None:
    ids = await _a_objects(api)
    number = {**NUMBER, "number": "+14155550199", "assistantId": ids["assistant"]}
    imported = await api.b.post("/phone-number", json=number)
    assert imported.status_code == 422
    assert imported.json()["message"] == [f"assistantId: assistant {ids['assistant']} not found"]
    body = {**ASSISTANT, "model": {**ASSISTANT["model"], "toolIds": [ids["tool"]]}}
    created = await api.b.post("/assistant", json=body)
    assert created.status_code == 422
    assert created.json()["message"] == [f"model.toolIds: tool {ids['tool']} not found"]
    own = (await api.b.post("/phone-number", json={**NUMBER, "number": "+14155550198"})).json()
    moved = await api.b.patch(f"/phone-number/{own['id']}", json={"assistantId": ids["assistant"]})
    assert moved.status_code == 422
    assert (await api.b.get("/assistant")).json() == []

"""Scheduled and batch outbound calls (Vapi's `schedulePlan`, `customers[]`): stored, placed by
the scheduler through Twilio's REST API (the loopback fake) when due, paced by the tenant's
concurrent-call limit, expired after `latestAt`, cancellable, and never touched by the orphan
sweep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig, RecordedRequest
from control.scheduling import SCHEDULE_EXPIRED, CallScheduler
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.conftest import serve as serve_app
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api

pytestmark = pytest.mark.timeout(60)

ACCOUNT = NUMBER["twilioAccountSid"]
CUSTOMERS = ["+15557654321", "+15557654322", "+15557654323"]


class Scheduled:
    def __init__(self, api: Api, twilio: FakeTwilioRest, assistant: str, number: str) -> None:
        self.api, self.twilio, self.assistant, self.number = api, twilio, assistant, number

    @property
    def scheduler(self) -> CallScheduler:
        scheduler: CallScheduler = self.api.app.state.scheduler
        return scheduler

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"assistantId": self.assistant, "phoneNumberId": self.number, **fields}

    async def status(self, call_id: str) -> dict[str, Any]:
        call: dict[str, Any] = (await self.api.a.get(f"/call/{call_id}")).json()
        return call

    async def until(self, done: Callable[[], bool], seconds: float = 5.0) -> None:
        for _ in range(int(seconds / 0.02)):
            if done():
                return
            await asyncio.sleep(0.02)
        assert done(), f"not within {seconds} s"


@pytest.fixture
async def scheduled(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Scheduled]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    engines = ScriptedEngines([], [], seconds_per_char=0.01)
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path,
            assistant_file,
            database_url,
            engines,
            twilio_api_base_url=twilio_base,
            scheduler_poll_seconds=0.1,
        )
        async with running_api(app) as api:
            assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            yield Scheduled(api, fake, assistant, number)


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _twilio_says(api: Api, sid: str, to: str, status: str) -> None:
    form = {
        "CallSid": sid, "AccountSid": ACCOUNT, "From": NUMBER["number"], "To": to,
        "Direction": "outbound-api", "CallStatus": status, "SequenceNumber": "3",
    }  # fmt: skip
    url = f"{api.base}/twilio/status"
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
    async with httpx.AsyncClient() as http:
        assert (await http.post(url, data=form, headers=headers)).status_code == 204


async def test_a_scheduled_call_waits_for_its_time_then_is_placed(scheduled: Scheduled) -> None:
    api, fake = scheduled.api, scheduled.twilio
    body = scheduled.body(
        customer={"number": CUSTOMERS[0], "name": "Ada"},
        schedulePlan={"earliestAt": _at(1.0), "latestAt": _at(3600)},
    )
    response = await api.a.post("/call", json=body)
    assert response.status_code == 201, response.text
    call = response.json()
    assert call["status"] == "scheduled" and "phoneCallProviderId" not in call
    assert set(call["schedulePlan"]) == {"earliestAt", "latestAt"}
    assert "metadata" not in call  # the placing URLs are the server's, not shown
    await asyncio.sleep(0.4)
    assert fake.calls == {}  # not before earliestAt
    # the other tenant neither sees it nor can cancel it
    assert (await api.b.get(f"/call/{call['id']}")).status_code == 404
    await scheduled.until(lambda: len(fake.calls) == 1)
    (request,) = fake.requests
    assert request.field("To") == CUSTOMERS[0] and request.field("From") == NUMBER["number"]
    assert request.field("StatusCallback") == (
        f"{api.base}/twilio/status?call={call['id']}&tenant={api.tenant_a}"
    )
    placed = await scheduled.status(call["id"])
    assert placed["status"] == "queued" and placed["phoneCallProviderId"] in fake.calls
    assert placed["customer"] == {"number": CUSTOMERS[0], "name": "Ada"}


async def test_a_batch_answers_results_and_errors_and_places_each_call(
    scheduled: Scheduled,
) -> None:
    api, fake = scheduled.api, scheduled.twilio
    bad = {"number": CUSTOMERS[2], "assistantOverrides": {"model": {"provider": "nope"}}}
    customers = [{"number": CUSTOMERS[0]}, {"number": CUSTOMERS[1], "name": "Bo"}, bad]
    response = await api.a.post("/call", json=scheduled.body(customers=customers))
    assert response.status_code == 201, response.text
    batch = response.json()
    assert [c["customer"]["number"] for c in batch["results"]] == CUSTOMERS[:2]
    assert all(c["status"] == "scheduled" for c in batch["results"])
    (error,) = batch["errors"]
    assert error["customer"]["number"] == CUSTOMERS[2]
    assert "customer.assistantOverrides.model" in error["error"]
    # due now: placed at once, not at the next round
    await scheduled.until(lambda: len(fake.calls) == 2, seconds=2.0)
    assert sorted(r.field("To") or "" for r in fake.requests) == CUSTOMERS[:2]
    for call in batch["results"]:
        assert (await scheduled.status(call["id"]))["status"] == "queued"


async def test_a_batch_goes_out_as_the_tenants_limit_allows(scheduled: Scheduled) -> None:
    api, fake = scheduled.api, scheduled.twilio
    await api.stores.tenants.set_max_calls(api.tenant_a, 1)
    customers = [{"number": n} for n in CUSTOMERS]
    batch = (await api.a.post("/call", json=scheduled.body(customers=customers))).json()
    await scheduled.until(lambda: len(fake.calls) == 1)
    await asyncio.sleep(0.5)  # several rounds: the limit holds the rest back
    assert len(fake.calls) == 1
    first = fake.requests[0]
    sid = next(iter(fake.calls))
    # the callee did not answer: Twilio says so, the slot frees, the next call goes
    await _twilio_says(api, sid, first.field("To") or "", "no-answer")
    await scheduled.until(lambda: len(fake.calls) == 2)
    statuses = [(await scheduled.status(c["id"]))["status"] for c in batch["results"]]
    assert sorted(statuses) == ["ended", "queued", "scheduled"]


async def test_a_window_that_closes_first_expires_the_call_unplaced(scheduled: Scheduled) -> None:
    api, fake = scheduled.api, scheduled.twilio
    await api.stores.tenants.set_max_calls(api.tenant_a, 0)  # nothing can go out
    body = scheduled.body(
        customer={"number": CUSTOMERS[0]},
        schedulePlan={"earliestAt": _at(0), "latestAt": _at(0.6)},
    )
    call = (await api.a.post("/call", json=body)).json()
    await asyncio.sleep(1.0)
    ended = await scheduled.status(call["id"])
    assert ended["status"] == "ended" and ended["endedReason"] == SCHEDULE_EXPIRED
    assert "latestAt" in ended["endedMessage"]
    assert fake.calls == {}


async def test_a_cancelled_scheduled_call_is_never_placed(scheduled: Scheduled) -> None:
    api, fake = scheduled.api, scheduled.twilio
    body = scheduled.body(customer={"number": CUSTOMERS[0]}, schedulePlan={"earliestAt": _at(0.5)})
    call = (await api.a.post("/call", json=body)).json()
    cancelled = await api.a.post(f"/call/{call['id']}/control", json={"type": "end-call"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "ended"
    await asyncio.sleep(1.0)
    assert fake.calls == {}
    assert (await scheduled.status(call["id"]))["endedReason"] == "manually-canceled"


async def test_scheduled_calls_survive_the_startup_sweep_and_are_claimed_once(
    scheduled: Scheduled,
) -> None:
    from control.orphans import OrphanSweeper
    from storage.nodes import LocalNodes

    api = scheduled.api
    body = scheduled.body(customer={"number": CUSTOMERS[0]}, schedulePlan={"earliestAt": _at(60)})
    call = (await api.a.post("/call", json=body)).json()
    # a restarted lone node closes the unowned calls of its predecessor: not scheduled ones
    sweeper = OrphanSweeper(LocalNodes("restarted"), api.stores, api.app.state.ava.settings)
    assert await sweeper.sweep(startup=True) == []
    assert (await scheduled.status(call["id"]))["status"] == "scheduled"
    # two nodes racing for it: one wins
    claims = await asyncio.gather(
        *(api.stores.calls.claim_scheduled(call["id"], f"node-{i}") for i in range(4))
    )
    assert sorted(claims) == [False, False, False, True]


async def test_bad_schedules_are_refused_before_anything_is_stored(scheduled: Scheduled) -> None:
    api = scheduled.api
    one = {"number": CUSTOMERS[0]}
    cases = [
        (scheduled.body(customer=one, schedulePlan={"earliestAt": _at(60), "latestAt": _at(30)}),
         "schedulePlan.latestAt"),
        (scheduled.body(customer=one, schedulePlan={"earliestAt": _at(-60), "latestAt": _at(-1)}),
         "schedulePlan.latestAt"),
        (scheduled.body(customer=one, schedulePlan={"earliestAt": _at(86400 * 400)}),
         "schedulePlan.earliestAt"),
        (scheduled.body(customer=one, customers=[one]), "customer.number"),
        (scheduled.body(customers=[]), "customers"),
        (scheduled.body(customers=[one] * 101), "customers"),
        (scheduled.body(customers=[{"number": "555"}]), "customers.0.number"),
    ]  # fmt: skip
    for body, field in cases:
        response = await api.a.post("/call", json=body)
        assert response.status_code == 422, (field, response.text)
        messages = response.json()["message"]
        assert any(m.startswith(field) for m in messages), (field, messages)
    assert (await api.a.get("/call")).json() == []


async def test_a_call_that_breaks_its_placing_ends_and_the_scheduler_goes_on(
    scheduled: Scheduled, monkeypatch: pytest.MonkeyPatch
) -> None:
    import control.scheduling

    api, fake = scheduled.api, scheduled.twilio
    real = control.scheduling.place_outbound

    async def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(control.scheduling, "place_outbound", broken)
    body = scheduled.body(customer={"number": CUSTOMERS[0]}, schedulePlan={"earliestAt": _at(0)})
    first = (await api.a.post("/call", json=body)).json()
    for _ in range(100):
        ended = await scheduled.status(first["id"])
        if ended["status"] == "ended":
            break
        await asyncio.sleep(0.05)
    assert ended["endedReason"] == "twilio-failed-to-connect-call"
    assert "RuntimeError" in ended["endedMessage"]
    monkeypatch.setattr(control.scheduling, "place_outbound", real)
    body["customer"] = {"number": CUSTOMERS[1]}
    second = (await api.a.post("/call", json=body)).json()
    await scheduled.until(lambda: len(fake.calls) == 1)
    assert (await scheduled.status(second["id"]))["status"] == "queued"


async def test_a_scheduled_batch_goes_out_once_each_across_a_restart(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    """Three customers, one line (limit 1): the server stops with one call ringing and two
    waiting; the restarted server places the other two, each once."""
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    engines = ScriptedEngines([], [], seconds_per_char=0.01)

    async def until(done: Callable[[], bool]) -> None:
        for _ in range(250):
            if done():
                return
            await asyncio.sleep(0.02)
        assert done(), "not within 5 s"

    def created() -> list[RecordedRequest]:
        return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/Calls.json")]

    async with serve(fake.app) as twilio_base:

        def app() -> Any:
            return api_app(
                tmp_path, assistant_file, database_url, engines,
                twilio_api_base_url=twilio_base, scheduler_poll_seconds=0.1,
            )  # fmt: skip

        window = {"earliestAt": _at(0.2), "latestAt": _at(3600)}
        async with running_api(app()) as api:
            assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            await api.stores.tenants.set_max_calls(api.tenant_a, 1)
            body = {
                "assistantId": assistant, "phoneNumberId": number, "schedulePlan": window,
                "customers": [{"number": n} for n in CUSTOMERS],
            }  # fmt: skip
            response = await api.a.post("/call", json=body)
            assert response.status_code == 201, response.text
            ids = [c["id"] for c in response.json()["results"]]
            await until(lambda: len(created()) == 1)
            await asyncio.sleep(0.3)  # rounds go by: the limit holds the other two back
            assert len(created()) == 1
            key, first_base = api.key_a, api.base
        # Restarted on the same database: the ringing call is its predecessor's (closed by the
        # startup sweep, or ended by Twilio's answer below); the other two are still to go.
        async with (
            serve_app(app()) as base,
            httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as a,
        ):
            for placed in (1, 2):
                request = created()[placed - 1]
                form = {
                    "CallSid": list(fake.calls)[placed - 1], "AccountSid": ACCOUNT,
                    "From": NUMBER["number"], "To": request.field("To") or "",
                    "Direction": "outbound-api", "CallStatus": "no-answer", "SequenceNumber": "3",
                }  # fmt: skip
                # Twilio calls the StatusCallback it was given (naming the call), at the new node
                url = (request.field("StatusCallback") or "").replace(first_base, base)
                signed = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
                assert (await a.post(url, data=form, headers=signed)).status_code == 204
                await until(lambda n=placed + 1: len(created()) == n)  # type: ignore[misc]
            await asyncio.sleep(0.5)  # a few more scheduler rounds: nothing is placed twice
            assert sorted(r.field("To") or "" for r in created()) == CUSTOMERS
            calls = [(await a.get(f"/call/{i}")).json() for i in ids]
            assert all(c["status"] in ("queued", "ended") for c in calls), calls
            assert {c["phoneCallProviderId"] for c in calls} == set(fake.calls)

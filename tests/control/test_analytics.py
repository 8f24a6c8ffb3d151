"""POST /analytics: a tenant's call totals per period and group, from the stored priced costs, on
SQLite and PostgreSQL; another tenant's calls are never counted; bad queries are 422s."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from control.routes.analytics import MAX_CALLS
from storage.tables import CallRow
from storage.vapi import cost_breakdown
from tests.control.conftest import Api
from voice.pricing import load_price_table, price_call

pytestmark = pytest.mark.timeout(60)

PRICES = load_price_table()
DAY1 = datetime(2026, 11, 1, tzinfo=UTC)  # a Sunday: US daylight saving time ends at 09:00 UTC
RANGE = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-03T00:00:00Z"}
CLOUD: dict[str, Any] = {
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
    "model": {"provider": "openai", "model": "gpt-4o"},
    "voice": {"provider": "11labs", "voiceId": "rachel"},
}


def priced(seconds: float, tokens: int, characters: int) -> list[dict[str, Any]]:
    usage = {"promptTokens": tokens, "completionTokens": tokens // 10, "characters": characters}
    return price_call(PRICES, seconds=seconds, usage=usage, transport="twilio", **CLOUD)


async def add_call(
    api: Api, tenant: str, call_id: str, created: datetime, seconds: float, *,
    assistant: str | None, type: Any = "inboundPhoneCall", reason: str = "customer-ended-call",
    costs: list[dict[str, Any]] | None = None,
) -> float:  # fmt: skip
    """An ended call as the recorder leaves it; returns its total cost."""
    calls = api.stores.calls
    await calls.create_call(
        tenant, type=type, call_id=call_id, assistant_id=assistant, status="in-progress",
        started_at=created,
    )  # fmt: skip
    async with calls.batch() as w:
        await w.finish_call(call_id, reason, ended_at=created + timedelta(seconds=seconds))
        if costs:
            await w.set_costs(call_id, costs)
    async with api.stores.engine.begin() as connection:
        await connection.execute(
            update(CallRow).where(CallRow.id == call_id).values(created_at=created)
        )
    total: float = cost_breakdown(costs or [])["total"]
    return total


async def post(api: Api, *queries: dict[str, Any], tenant: str = "a") -> Any:
    client = api.a if tenant == "a" else api.b
    response = await client.post("/analytics", json={"queries": list(queries)})
    assert response.status_code == 201, response.text
    return response.json()


async def two_tenants(api: Api) -> dict[str, float]:
    a, b = api.tenant_a, api.tenant_b
    return {
        "a1": await add_call(api, a, "call_a1", DAY1 + timedelta(hours=10), 120,
                             assistant="asst-1", costs=priced(120, 20_000, 3_000)),
        "a2": await add_call(api, a, "call_a2", DAY1 + timedelta(hours=23, minutes=30), 60,
                             assistant="asst-2", type="webCall", reason="assistant-ended-call",
                             costs=priced(60, 5_000, 900)),
        # 05:00 UTC on the 2nd is 21:00 on the 1st in Los Angeles (PST since the 1st, 09:00 UTC).
        "a3": await add_call(api, a, "call_a3", DAY1 + timedelta(days=1, hours=5), 30,
                             assistant="asst-1", costs=priced(30, 1_000, 200)),
        # Ended by an orphan sweep: never priced.
        "a4": await add_call(api, a, "call_a4", DAY1 + timedelta(days=1, hours=12), 10,
                             assistant="asst-1", reason="worker-died"),
        "b1": await add_call(api, b, "call_b1", DAY1 + timedelta(hours=12), 600,
                             assistant="asst-b", costs=priced(600, 90_000, 20_000)),
        # Outside the range asked for.
        "a0": await add_call(api, a, "call_a0", DAY1 - timedelta(minutes=1), 60,
                             assistant="asst-1", costs=priced(60, 1, 1)),
    }  # fmt: skip


async def test_sums_per_day_and_per_group_count_only_the_tenants_calls(api: Api) -> None:
    cost = await two_tenants(api)
    (daily,) = await post(
        api,
        {
            "table": "call", "name": "daily",
            "timeRange": {**RANGE, "step": "day"},
            "operations": [
                {"operation": "sum", "column": "cost"},
                {"operation": "count", "column": "id"},
                {"operation": "avg", "column": "duration", "alias": "meanSeconds"},
                {"operation": "sum", "column": "costBreakdown.llmPromptTokens"},
            ],
        },
    )  # fmt: skip
    assert daily["name"] == "daily" and daily["timeRange"]["step"] == "day"
    assert daily["result"] == [
        {"date": "2026-11-01T00:00:00+00:00", "sumCost": pytest.approx(cost["a1"] + cost["a2"]),
         "countId": 2, "meanSeconds": 90.0, "sumCostBreakdown.llmPromptTokens": 25_000},
        {"date": "2026-11-02T00:00:00+00:00", "sumCost": pytest.approx(cost["a3"]),
         "countId": 2, "meanSeconds": 20.0, "sumCostBreakdown.llmPromptTokens": 1_000},
    ]  # fmt: skip
    assert cost["a1"] > 0.02  # real prices, not zeros
    groups = {
        "table": "call", "name": "by assistant", "timeRange": RANGE,
        "groupBy": ["assistantId", "endedReason"],
        "operations": [
            {"operation": "sum", "column": "costBreakdown.tts"},
            {"operation": "max", "column": "cost"},
            {"operation": "min", "column": "minutesUsed"},
        ],
    }  # fmt: skip
    (by_assistant,) = await post(api, groups)
    usage = {"a1": (120, 20_000, 3_000), "a2": (60, 5_000, 900), "a3": (30, 1_000, 200)}
    tts = {k: cost_breakdown(priced(*args))["tts"] for k, args in usage.items()}
    assert by_assistant["result"] == [
        {"assistantId": "asst-1", "endedReason": "customer-ended-call",
         "sumCostBreakdown.tts": pytest.approx(tts["a1"] + tts["a3"]),
         "maxCost": cost["a1"], "minMinutesUsed": 0.5},
        {"assistantId": "asst-1", "endedReason": "worker-died",
         "sumCostBreakdown.tts": 0, "maxCost": 0, "minMinutesUsed": pytest.approx(10 / 60)},
        {"assistantId": "asst-2", "endedReason": "assistant-ended-call",
         "sumCostBreakdown.tts": pytest.approx(tts["a2"]), "maxCost": cost["a2"],
         "minMinutesUsed": 1.0},
    ]  # fmt: skip
    # The other tenant, same query: its one call only.
    (theirs,) = await post(api, groups, tenant="b")
    assert [r["assistantId"] for r in theirs["result"]] == ["asst-b"]
    assert theirs["result"][0]["maxCost"] == cost["b1"]


async def test_periods_follow_the_time_zone_and_its_daylight_saving(api: Api) -> None:
    cost = await two_tenants(api)
    los_angeles = {
        "table": "call", "name": "la",
        "timeRange": {**RANGE, "step": "day", "timezone": "America/Los_Angeles"},
        "groupBy": ["type"],
        "operations": [{"operation": "sum", "column": "cost"}],
    }  # fmt: skip
    (result,) = await post(api, los_angeles)
    assert result["timeRange"]["timezone"] == "America/Los_Angeles"
    assert result["result"] == [
        # 31 Oct 17:00 PDT (a0) is outside the range; a1 (03:00 PDT), a3 (21:00 PST) on the 1st.
        {"date": "2026-11-01T00:00:00-07:00", "type": "inboundPhoneCall",
         "sumCost": pytest.approx(cost["a1"] + cost["a3"])},
        {"date": "2026-11-01T00:00:00-07:00", "type": "webCall", "sumCost": cost["a2"]},
        {"date": "2026-11-02T00:00:00-08:00", "type": "inboundPhoneCall", "sumCost": 0},
    ]  # fmt: skip
    paris = {**RANGE, "step": "month", "timezone": "Europe/Paris"}
    monthly = {**los_angeles, "name": "m", "groupBy": [], "timeRange": paris}
    (month,) = await post(api, monthly)
    total = cost["a1"] + cost["a2"] + cost["a3"]
    assert month["result"] == [
        {"date": "2026-11-01T00:00:00+01:00", "sumCost": pytest.approx(total)}
    ]


async def test_a_whole_range_without_a_step_is_one_row_and_empty_ranges_have_none(
    api: Api,
) -> None:
    cost = await two_tenants(api)
    whole = {"table": "call", "name": "all", "timeRange": {"start": "2026-10-01T00:00:00"},
             "operations": [{"operation": "sum", "column": "costBreakdown.total"}]}  # fmt: skip
    empty = {**whole, "name": "none", "timeRange": {"start": "2020-01-01", "end": "2020-02-01"}}
    got = await post(api, whole, empty)
    assert [q["name"] for q in got] == ["all", "none"]
    expected = cost["a0"] + cost["a1"] + cost["a2"] + cost["a3"]  # naive start: UTC
    assert got[0]["result"] == [{"sumCostBreakdown.total": pytest.approx(expected)}]
    assert got[1]["result"] == []


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"table": "subscription"}, "table"),
    ({"operations": [{"operation": "history", "column": "cost"}]}, "operation"),
    ({"operations": [{"operation": "sum", "column": "concurrency"}]}, "column"),
    ({"operations": [{"operation": "sum", "column": "id"}]}, "only count applies to column id"),
    ({"operations": []}, "operations"),
    ({"groupBy": ["customer.number"]}, "groupBy"),
    ({"timeRange": {"timezone": "Mars/Olympus"}}, "unknown time zone 'Mars/Olympus'"),
    ({"timeRange": {"step": "fortnight"}}, "step"),
    ({"timeRange": {"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}},
     "start must be before end"),
    ({"timeRange": {"start": "0001-01-01T00:00:00+05:00"}}, "between 1970 and 9000"),
    ({"name": ""}, "name"),
    ({"filters": {"x": 1}}, "filters"),
]  # fmt: skip


async def test_a_bad_query_is_a_422_naming_what_is_wrong(api: Api) -> None:
    base = {"table": "call", "name": "q", "operations": [{"operation": "count", "column": "id"}]}
    for query, says in BAD_QUERIES:
        response = await api.a.post("/analytics", json={"queries": [{**base, **query}]})
        assert response.status_code == 422, (query, response.text)
        assert says in response.text, (query, response.text)


async def test_bounds_and_the_key(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    query = {"table": "call", "name": "q", "operations": [{"operation": "count", "column": "id"}]}
    await two_tenants(api)
    ranged = {**query, "timeRange": RANGE}
    (counted,) = await post(api, ranged)
    assert counted["result"] == [{"countId": 4}]
    # A range holding more calls than one request aggregates is refused, not half-counted.
    # (by the module: the package's `analytics` attribute is the router)
    monkeypatch.setattr(importlib.import_module("control.routes.analytics"), "MAX_CALLS", 3)
    refused = await api.a.post("/analytics", json={"queries": [ranged]})
    assert refused.status_code == 422 and "more than 3 calls" in refused.text
    # The bound is per request: two queries of two calls each are four.
    middle = "2026-11-02T00:00:00Z"
    halves = [
        {**query, "timeRange": {"start": RANGE["start"], "end": middle}},
        {**query, "timeRange": {"start": middle, "end": RANGE["end"]}},
    ]
    assert (await post(api, halves[0]))[0]["result"] == [{"countId": 2}]
    both = await api.a.post("/analytics", json={"queries": halves})
    assert both.status_code == 422, both.text
    assert (await post(api, ranged, tenant="b"))[0]["result"] == [{"countId": 1}]
    too_many = await api.a.post("/analytics", json={"queries": [query] * 11})
    assert too_many.status_code == 422
    assert (await api.a.post("/analytics", json={"queries": []})).status_code == 422
    anonymous = await api.a.post(
        "/analytics", json={"queries": [query]}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert MAX_CALLS >= 10_000  # a month of a busy tenant's calls in one request

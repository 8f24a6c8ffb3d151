"""`POST /analytics`: totals of the tenant's calls per period and group, in Vapi's shape.

The subset of Vapi's analytics AVA answers: table `call`; operations `sum`, `avg`, `count`, `min`,
`max` on `id` (count only), `cost`, `duration` (seconds, `endedAt - startedAt`), `minutesUsed`
and `costBreakdown.*`; `groupBy` `assistantId`, `endedReason`, `type`, `status`; `timeRange`
(`start`, `end`: default the last 7 days; `step` `minute` / `hour` / `day` / `week` (from
Monday) / `month`, absent: the whole range; `timezone`, an IANA name, default UTC) on the call's
`createdAt`. Each result row is `{date?, <groups>, <alias>: value}`, the alias defaulting to
Vapi's `${operation}${Column}` (`sumCost`, `avgDuration`); `avg`/`min`/`max` of nothing is null.

Costs are the calls' stored `costs[]` (voice.pricing) folded into Vapi's `costBreakdown`
(storage.vapi.cost_breakdown), the same numbers `GET /call/{id}` shows. They live in a JSON
column, so the aggregation runs here over one bounded query per request: the tenant's own calls
(the tenant filter is in the query) created in the range, at most `MAX_CALLS` over all of a
request's queries; more is refused (422) rather than answered with a partial total.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from control.deps import StoresDep, TenantDep
from control.errors import ApiError
from storage.calls import CallUsage
from storage.vapi import BREAKDOWN_FIELDS, cost_breakdown

__all__ = ["MAX_CALLS", "router"]

router = APIRouter(tags=["analytics"])

# Calls one query may aggregate. Measured (2 shared cores, loaded, SQLite): 100k calls took 8 s
# to fetch and 6 s to fold; 20k, 1.9 s and 0.9 s. A tenant with more asks for shorter ranges.
MAX_CALLS = 20_000
_DEFAULT_RANGE = timedelta(days=7)  # Vapi's default start: 7 days ago
_COST_DECIMALS = 6
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)

Column = Literal[
    "id", "cost", "duration", "minutesUsed",
    "costBreakdown.transport", "costBreakdown.stt", "costBreakdown.llm", "costBreakdown.tts",
    "costBreakdown.vapi", "costBreakdown.chat", "costBreakdown.total",
    "costBreakdown.llmPromptTokens", "costBreakdown.llmCompletionTokens",
    "costBreakdown.llmCachedPromptTokens", "costBreakdown.ttsCharacters",
]  # fmt: skip
GroupBy = Literal["assistantId", "endedReason", "type", "status"]
Step = Literal["minute", "hour", "day", "week", "month"]
_GROUPS: dict[str, Callable[[CallUsage], str | None]] = {
    "assistantId": lambda c: c.assistant_id,
    "endedReason": lambda c: c.ended_reason,
    "type": lambda c: c.type,
    "status": lambda c: c.status,
}


class _Vapi(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Operation(_Vapi):
    operation: Literal["sum", "avg", "count", "min", "max"]
    column: Column
    alias: str | None = Field(default=None, min_length=1, max_length=100)

    @property
    def key(self) -> str:
        return self.alias or f"{self.operation}{self.column[0].upper()}{self.column[1:]}"


class TimeRange(_Vapi):
    start: datetime | None = None
    end: datetime | None = None
    step: Step | None = None
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("start", "end")
    @classmethod
    def _utc_unless_said(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        # Vapi reads a timestamp without an offset as UTC.
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        if not _EARLIEST <= value <= _LATEST:  # and the default range stays computable
            raise ValueError(f"must be between {_EARLIEST.year} and {_LATEST.year}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r} (an IANA name: Europe/Paris)") from exc
        return name


class Query(_Vapi):
    table: Literal["call"]
    name: str = Field(min_length=1, max_length=100)
    operations: list[Operation] = Field(min_length=1, max_length=20)
    group_by: list[GroupBy] = Field(default_factory=list, max_length=4)
    time_range: TimeRange | None = None


class AnalyticsBody(_Vapi):
    queries: list[Query] = Field(min_length=1, max_length=10)


@router.post("/analytics", status_code=201)  # Vapi answers a POST with 201
async def analytics(
    body: AnalyticsBody, stores: StoresDep, tenant_id: TenantDep
) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    answers, used = [], 0
    for i, query in enumerate(body.queries):
        for op in query.operations:
            if op.column == "id" and op.operation != "count":
                raise ApiError(422, f"queries[{i}]: only count applies to column id")
        span = query.time_range or TimeRange()
        end = span.end or now
        start = span.start or end - _DEFAULT_RANGE
        if start >= end:
            raise ApiError(422, f"queries[{i}].timeRange: start must be before end")
        budget = MAX_CALLS - used  # per request, across its queries
        calls = await stores.calls.usage(tenant_id, start=start, end=end, limit=budget)
        if len(calls) > budget:
            raise ApiError(
                422,
                f"the queries' time ranges hold more than {MAX_CALLS} calls in all; ask for "
                "shorter ranges (several requests) instead",
            )
        used += len(calls)
        answers.append(
            {
                "name": query.name,
                "timeRange": {
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                    "timezone": span.timezone,
                    **({"step": span.step} if span.step else {}),
                },
                # In a thread: 20k calls take about a second of CPU, which live calls' paced
                # audio on this event loop must not wait behind.
                "result": await asyncio.to_thread(
                    aggregate, calls, query, ZoneInfo(span.timezone), span.step
                ),
            }
        )
    return answers


def aggregate(
    calls: Iterable[CallUsage], query: Query, zone: tzinfo, step: Step | None
) -> list[dict[str, Any]]:
    """One row per (period, group values) that has calls, in period then group order."""
    groups: dict[tuple[str | None, ...], list[dict[str, float | None]]] = {}
    for call in calls:
        date = _period(call.created_at, zone, step).isoformat() if step else None
        key = (date, *(_GROUPS[g](call) for g in query.group_by))
        groups.setdefault(key, []).append(_values(call))
    rows = []
    for key in sorted(groups, key=lambda k: tuple((v is not None, v or "") for v in k)):
        row: dict[str, Any] = {"date": key[0]} if step else {}
        row.update(zip(query.group_by, key[1:], strict=True))
        for op in query.operations:
            row[op.key] = _apply(op, [v[op.column] for v in groups[key]])
        rows.append(row)
    return rows


def _values(call: CallUsage) -> dict[str, float | None]:
    breakdown = cost_breakdown(call.costs)
    duration = None
    if call.started_at is not None and call.ended_at is not None:
        duration = max((call.ended_at - call.started_at).total_seconds(), 0.0)
    values: dict[str, float | None] = {
        f"costBreakdown.{field}": float(breakdown[field]) for field in BREAKDOWN_FIELDS
    }
    values |= {
        "id": 1.0,
        "cost": float(breakdown["total"]),
        "duration": duration,
        "minutesUsed": None if duration is None else duration / 60,
    }
    return values


def _apply(op: Operation, column: list[float | None]) -> float | int | None:
    values = [v for v in column if v is not None]
    if op.operation == "count":
        return len(values)
    if op.operation == "sum":
        return round(sum(values), _COST_DECIMALS)
    if not values:
        return None
    if op.operation == "avg":
        return round(sum(values) / len(values), _COST_DECIMALS)
    return min(values) if op.operation == "min" else max(values)


def _period(at: datetime, zone: tzinfo, step: Step) -> datetime:
    """The start of `at`'s period, in `zone` (a day is the zone's calendar day)."""
    local = at.astimezone(zone).replace(second=0, microsecond=0)
    if step == "minute":
        return local
    local = local.replace(minute=0)
    if step == "hour":
        return local
    local = local.replace(hour=0)
    if step == "week":
        local -= timedelta(days=local.weekday())
    elif step == "month":
        local = local.replace(day=1)
    return local  # wall-clock arithmetic: the offset is the zone's at the period's start (DST)

"""The post-call analysis: whole phone calls (Twilio's side simulated, the call's own engines
scripted) analysed by the assistant's model — the loopback fake OpenAI — through the real
webhook sender to a local receiver and into the call's record; a slow model timing out; the
analysis cancelled at shutdown; the plan's 422s and the GET /call filters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig, Reply
from benchmarks.fakes.server import serve as serve_fake
from control.app import create_app
from control.post_call import CloudModels, PostCallAnalyzer, running_analysis
from media.twilio.caller import CallScript, place_call
from storage import TwilioCredentials, to_vapi
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from tests.control.conftest import Api, running_api
from tests.control.webhook_receiver import receiver, sdk_parse
from voice.assistant import Assistant
from voice.events import CallEnded
from voice.testing import tone_ulaw
from voice.types import EndedReason

pytestmark = pytest.mark.timeout(60)

KEY = "test-key"
SPEECH = tone_ulaw(0.8, frequency=300.0)
SAID = "I'd like a cleaning on Tuesday."
ANSWER = "You're booked for Tuesday at two."
SUMMARY = "The caller booked a cleaning for Tuesday at two."
SCHEMA = {
    "type": "object",
    "properties": {"day": {"type": "string"}, "booked": {"type": "boolean"}},
    "required": ["day", "booked"],
}
PLAN = {
    "structuredDataPlan": {"enabled": True, "schema": SCHEMA},
    "successEvaluationPlan": {"rubric": "NumericScale"},
}


# GET /call's analysis filters, and whether the analysed call matches each.
FILTERS = {
    "analysis.successEvaluation=8": True,
    "analysis.structuredData.booked=true": True,
    "analysis.structuredData.day=Tuesday&analysis.successEvaluation=8": True,
    "analysis.structuredData.day": True,  # present
    "analysis.successEvaluation=true": False,
    "analysis.structuredData.booked=false": False,
    "analysis.structuredData.day=Tuesday&analysis.successEvaluation=9": False,
    "analysis.structuredData.nothing": False,
}


def analyst(messages: list[dict[str, Any]]) -> Reply:
    """The fake model's answers to Vapi's default analysis prompts."""
    system = str(messages[0].get("content"))
    if "note-taker" in system:
        return SUMMARY
    if "data extractor" in system:
        return '```json\n{"day": "Tuesday", "booked": true}\n```'
    if "call evaluator" in system:
        return "8"
    return "Hello?"


@asynccontextmanager
async def fake_openai(**config: Any) -> AsyncIterator[tuple[OpenAiFake, str]]:
    fake = OpenAiFake(OpenAiFakeConfig(api_key=KEY, reply=analyst, **config))
    async with serve_fake(fake.app) as base:
        yield fake, f"{base}/v1"


def cloud_model() -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are Ava, a dental receptionist."}],
    }


def app_for(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    url: str,
    database: dict[str, str] | None = None,
    **assistant: Any,
) -> Any:
    path = assistant_file(model=cloud_model(), **assistant)
    settings = settings_for(
        path, tmp_path, OPENAI_API_KEY=KEY, OPENAI_BASE_URL=url, **(database or {})
    )
    # The call's own ears, mind and voice are scripted; the analysis uses the assistant's model.
    return create_app(settings, engines=ScriptedEngines([SAID], [ANSWER], seconds_per_char=0.01))


async def tenant_call(api: Api, hook: dict[str, Any], plan: dict[str, Any]) -> str:
    """A call to one of tenant A's numbers, answered by its stored assistant; its id."""
    stores = api.stores
    # The tenant's own OpenAI key: two tenants here, so the operator's is not shared.
    await stores.credentials.create(api.tenant_a, provider="openai", api_key=KEY)
    config = {"name": "Dental", "model": cloud_model(), "server": hook, "analysisPlan": plan}
    assistant = await stores.assistants.create(api.tenant_a, config)
    token, number = "number-auth-token", "+15557654321"
    await stores.phone_numbers.create(
        api.tenant_a,
        number=number,
        credentials=TwilioCredentials("AC" + "1" * 32, auth_token=token),
        assistant_id=assistant.id,
    )
    script = CallScript([SPEECH], hang_up_after=1.0)
    report = await place_call(api.base, script, auth_token=token, to_number=number,
                              fetch_record=False)  # fmt: skip
    assert report.error is None, report.error
    record = await stores.calls.find_by_twilio_sid(api.tenant_a, report.call_sid)
    assert record is not None
    return record.id


async def test_a_call_is_analysed_into_its_record_and_its_report(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    """On SQLite and PostgreSQL: the filters are JSON operators, which differ between them."""
    async with fake_openai(first_token_latency=0.01) as (fake, url), receiver() as hooks:
        app = app_for(tmp_path, assistant_file, url, {"database_url": database_url})
        async with running_api(app) as api:
            call_id = await tenant_call(api, hooks.server(), PLAN)
            report = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
            await app.state.analysis.idle()  # written to the record after the report's release
            call = (await api.a.get(f"/call/{call_id}")).json()
            found = {
                query: [c["id"] for c in (await api.a.get(f"/call?{query}")).json()]
                for query in FILTERS
            }
            other = (await api.b.get("/call?analysis.successEvaluation=8")).json()
            bad = [
                await api.a.get("/call?analysis.structuredData.a-b=1"),
                await api.a.get("/call?analysis.summary=x"),
                await api.a.get(
                    "/call?" + "&".join(f"analysis.structuredData.f{i}" for i in range(9))
                ),
                await api.a.get("/call?analysis.successEvaluation=" + "x" * 257),
            ]
            metrics = app.state.metrics.analysis_parts
    expected = {
        "summary": SUMMARY,
        "structuredData": {"day": "Tuesday", "booked": True},
        "successEvaluation": "8",
    }
    assert call["analysis"] == expected
    assert call["summary"] == SUMMARY  # Vapi's legacy top-level field
    assert report["call"]["id"] == call_id
    assert report["analysis"] == expected and report["summary"] == SUMMARY
    assert sdk_parse(report).analysis.success_evaluation == "8"  # as Vapi's SDK reads it
    assert report["endedReason"] == "customer-ended-call"
    # The analysis asked the assistant's own model, once per part, with the call's transcript.
    assert len(fake.chat_requests) == 3
    for request in fake.chat_requests:
        assert request["model"] == "gpt-4o-mini" and "tools" not in request
        assert f"User: {SAID}" in "".join(str(m["content"]) for m in request["messages"])
    assert found == {query: [call_id] if hit else [] for query, hit in FILTERS.items()}
    assert other == []  # tenant B sees none of tenant A's calls
    assert [r.status_code for r in bad] == [422] * 4
    for part in ("summary", "structuredData", "successEvaluation"):
        assert metrics.labels(part=part, outcome="ok")._value.get() == 1


async def test_a_slow_model_times_out_and_the_report_still_goes_promptly(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    plan = {
        "summaryPlan": {"timeoutSeconds": 1},
        "structuredDataPlan": {"enabled": True, "schema": SCHEMA, "timeoutSeconds": 1},
        "successEvaluationPlan": {"timeoutSeconds": 1},
    }
    async with fake_openai(first_token_latency=2.5) as (_, url), receiver() as hooks:
        app = app_for(tmp_path, assistant_file, url, server=hooks.server(), analysisPlan=plan)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH], hang_up_after=1.0))
            assert report.error is None, report.error
            ended = await hooks.wait_for(
                lambda m: m["type"] == "status-update" and m["status"] == "ended"
            )
            ended_at = time.monotonic()
            eocr = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
            held = time.monotonic() - ended_at
            await app.state.analysis.idle()
            record = await app.state.ava.stores.calls.get_call(None, ended["call"]["id"])
            assert record is not None
    timeout = {"kind": "timeout", "detail": "no answer within 1 s"}
    errors = {"summary": timeout, "structuredData": timeout, "successEvaluation": timeout}
    # The status went at once; the report waited for the analysis, and no longer than its 1 s.
    assert held < 1.8, held
    assert eocr["analysis"] == {"errors": errors} and eocr["summary"] == ""
    assert sdk_parse(eocr).analysis.summary is None  # AVA's `errors` do not trouble Vapi's SDK
    assert to_vapi(record)["analysis"] == {"errors": errors}


@dataclass
class Session:
    """What the analyzer reads of a live call (a session's `assistant` and `metadata`)."""

    assistant: Assistant
    metadata: dict[str, str] = field(default_factory=dict)


HISTORY = [
    {"role": "system", "content": "You are Ava."},
    {"role": "assistant", "content": "Hello, this is Ava."},
    {"role": "user", "content": SAID},
]


def ended(call_id: str, history: list[dict[str, Any]]) -> CallEnded:
    return CallEnded(call_id, 12.0, EndedReason.CUSTOMER_ENDED_CALL, "", {"messages": history})


async def test_shutdown_cancels_the_analysis_and_releases_the_report(tmp_path: Path) -> None:
    assistant = Assistant.model_validate({"model": cloud_model(), "analysisPlan": {
        "summaryPlan": {"timeoutSeconds": 60}, "successEvaluationPlan": {"timeoutSeconds": 60},
    }})  # fmt: skip
    saved: dict[str, dict[str, Any]] = {}
    released: list[Mapping[str, Any]] = []

    async def save(call_id: str, analysis: dict[str, Any]) -> None:
        saved[call_id] = analysis

    async with fake_openai(first_token_latency=30.0) as (fake, url):
        settings = settings_for(tmp_path / "a.json", tmp_path, OPENAI_API_KEY=KEY,
                                OPENAI_BASE_URL=url)  # fmt: skip
        live = {"c1": Session(assistant), "c2": Session(assistant)}
        analyzer = PostCallAnalyzer(live, CloudModels(settings, stores=None), save)  # type: ignore[arg-type]
        started = time.monotonic()
        async with running_analysis(analyzer, grace_seconds=0.2):
            analyzer.emit(ended("c1", HISTORY))
            # One message of conversation, under Vapi's threshold of 2: not analysed.
            analyzer.emit(ended("c2", HISTORY[:2]))
            assert analyzer.hold("c1", released.append)
            assert not analyzer.hold("c2", released.append)
        stopped = time.monotonic() - started
    cancelled = {"kind": "cancelled", "detail": "the server shut down first"}
    errors = {"summary": cancelled, "successEvaluation": cancelled}
    assert stopped < 3, stopped
    assert released == [{"summary": "", "analysis": {"errors": errors}}]
    assert saved == {"c1": {"errors": errors}}
    assert analyzer.running == 0


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (
            {"structuredDataPlan": {"enabled": True, "schema": {"type": "objet"}}},
            "analysisPlan.structuredDataPlan.schema: Value error, schema.type: 'objet'",
        ),
        (
            {"successEvaluationPlan": {"rubric": "GutFeeling"}},
            "analysisPlan.successEvaluationPlan.rubric: Input should be 'NumericScale'",
        ),
        (
            {"summaryPlan": {"messages": [{"role": "system", "content": "Summarize the call."}]}},
            "analysisPlan.summaryPlan: Value error, the messages never include {{transcript}}",
        ),
    ],
)
async def test_a_bad_plan_is_a_422(api: Api, plan: dict[str, Any], expected: str) -> None:
    response = await api.a.post("/assistant", json={"name": "x", "analysisPlan": plan})
    assert response.status_code == 422
    (message,) = response.json()["message"]
    assert message.startswith(expected), message


def careless(messages: list[dict[str, Any]]) -> Reply:
    """A model that summarizes, but extracts data against the schema and will not grade."""
    system = str(messages[0].get("content"))
    if "data extractor" in system:
        return '{"day": 3, "booked": true}'
    return "Probably fine?" if "call evaluator" in system else SUMMARY


async def test_answers_in_the_wrong_shape_are_recorded_with_their_reasons(tmp_path: Path) -> None:
    assistant = Assistant.model_validate({"model": cloud_model(), "analysisPlan": PLAN})
    saved: dict[str, dict[str, Any]] = {}
    released = asyncio.Event()

    async def save(call_id: str, analysis: dict[str, Any]) -> None:
        saved[call_id] = analysis

    async with fake_openai(first_token_latency=0.01) as (fake, url):
        fake.config.reply = careless
        settings = settings_for(tmp_path / "a.json", tmp_path, OPENAI_API_KEY=KEY,
                                OPENAI_BASE_URL=url)  # fmt: skip
        models = CloudModels(settings, stores=None)  # type: ignore[arg-type]
        analyzer = PostCallAnalyzer({"c1": Session(assistant)}, models, save)
        async with running_analysis(analyzer):
            analyzer.emit(ended("c1", HISTORY))
            assert analyzer.hold("c1", lambda _: released.set())
            await released.wait()
            await analyzer.idle()
    assert saved["c1"] == {
        "summary": SUMMARY,
        "errors": {
            "structuredData": {
                "kind": "schema-mismatch",
                "detail": "structuredData.day breaks the schema's 'type' rule",
            },
            "successEvaluation": {
                "kind": "invalid-answer",
                "detail": "NumericScale wants a whole number 1–10",
            },
        },
    }

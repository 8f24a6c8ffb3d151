"""A call's costs priced once at its end: the end-of-call-report and the stored call (Vapi's
GET /call shape) carry the same priced `costs[]`, `costBreakdown` and `cost`; the operator's
price file is checked at startup."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import serve as serve_fake
from control.app import create_app
from control.stores import open_stores
from media.twilio.caller import CallScript, place_call
from storage import CallRecord, to_vapi
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from tests.control.webhook_receiver import receiver, sdk_parse
from voice.providers.openai_llm import OpenAiLlm
from voice.session import Engines
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

CLOUD: dict[str, Any] = {
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
    "model": {"provider": "openai", "model": "gpt-4o-mini", "messages": []},
    "voice": {"provider": "11labs", "voiceId": "rachel"},
}
# The operator's contract price for Nova-3, merged over the shipped table.
CONTRACT = {"transcriber": {"deepgram": {"prices": {"nova-3": {"perMinute": 0.6}}}}}


async def test_the_report_and_the_stored_call_carry_the_same_priced_costs(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(json.dumps(CONTRACT))
    engines = ScriptedEngines(["What time do you open?"], ["We open at nine every weekday."])
    async with receiver() as hooks:
        path = assistant_file(server=hooks.server(), serverMessages=["end-of-call-report"], **CLOUD)
        settings = settings_for(path, tmp_path, prices_file=prices_file)
        async with serve(create_app(settings, engines=engines)) as base:
            call = await place_call(base, CallScript([tone_ulaw(0.8, frequency=300.0)]))
            assert call.error is None, call.error
            report = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
    # The app has stopped: its recorder flushed the call's end into the database.
    stores = await open_stores(settings)
    try:
        assert call.record is not None
        record = await stores.calls.get_call(None, call.record["id"])
    finally:
        await stores.close()
    assert record is not None
    sdk_parse(report)  # the shape Vapi's SDK reads
    costs = {c["type"]: c for c in report["costs"]}
    assert list(costs) == ["transport", "transcriber", "model", "voice", "vapi"]
    seconds = report["durationSeconds"]
    assert costs["transport"]["provider"] == "twilio"
    assert costs["transport"]["cost"] == 0.0085 * math.ceil(seconds / 60)  # per started minute
    # The contract's entry bills per started second (the default increment).
    assert costs["transcriber"]["cost"] == pytest.approx(math.ceil(seconds) / 60 * 0.6)
    model = costs["model"]
    assert model["model"] == {"provider": "openai", "model": "gpt-4o-mini"}
    assert model["promptTokens"] > 0 and model["completionTokens"] > 0
    assert model["cost"] == pytest.approx(
        model["promptTokens"] * 0.15e-6 + model["completionTokens"] * 0.6e-6, abs=1e-6
    )
    voice = costs["voice"]
    assert voice["characters"] >= len("We open at nine every weekday.")
    assert voice["cost"] == pytest.approx(voice["characters"] * 0.05 / 1000, abs=1e-6)
    assert costs["vapi"]["cost"] == 0
    breakdown = report["costBreakdown"]
    assert breakdown["llmPromptTokens"] == model["promptTokens"]
    assert breakdown["ttsCharacters"] == voice["characters"]
    assert breakdown["stt"] == costs["transcriber"]["cost"]
    total = sum(c["cost"] for c in report["costs"])
    assert report["cost"] == breakdown["total"] == pytest.approx(total) and total > 0
    # GET /call/{id} shows what the report said.
    stored = to_vapi(record)
    assert stored["costs"] == report["costs"]
    assert stored["costBreakdown"] == breakdown and stored["cost"] == report["cost"]
    assert not any(e.kind == "summary" and "costs" in e.data for e in record.events)


class OpenAiEngines(ScriptedEngines):
    """Scripted speech in and out; the model is the real OpenAI adapter."""

    def __init__(self, stt_texts: list[str], llm: OpenAiLlm) -> None:
        super().__init__(stt_texts, [])
        self.openai = llm

    def for_assistant(self, *args: Any, **kwargs: Any) -> Engines:
        return dataclasses.replace(super().for_assistant(*args, **kwargs), llm=self.openai)


async def test_cached_prompt_tokens_from_openai_are_priced_at_the_cached_rate(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    # The real OpenAI adapter against the loopback fake, which caches prompts as OpenAI does:
    # a 1500-token system prompt is cached from the second request on (1408 tokens, whole
    # 128-token blocks), and what it reports is what the call is billed for.
    system = {"role": "system", "content": " ".join(f"rule{i}" for i in range(1500))}
    cloud = {**CLOUD, "model": {**CLOUD["model"], "messages": [system]}}
    fake = OpenAiFake(OpenAiFakeConfig(api_key="sk-test", first_token_latency=0.02))
    async with serve_fake(fake.app) as fake_base, receiver() as hooks:
        llm = OpenAiLlm("sk-test", base_url=f"{fake_base}/v1", model="gpt-4o-mini")
        engines = OpenAiEngines(["What time do you open?", "Where are you?"], llm)
        path = assistant_file(server=hooks.server(), serverMessages=["end-of-call-report"], **cloud)
        settings = settings_for(path, tmp_path)
        try:
            async with serve(create_app(settings, engines=engines)) as base:
                speech = tone_ulaw(0.8, frequency=300.0)
                call = await place_call(base, CallScript([speech, speech]))
                assert call.error is None, call.error
                report = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
        finally:
            await llm.aclose()
    assert len(call.turns) == 2
    model = next(c for c in report["costs"] if c["type"] == "model")
    prompt, cached = model["promptTokens"], model["cachedPromptTokens"]
    # At least the second turn's system prompt came from the cache; every count is whole blocks.
    assert prompt > 3000 and 1408 <= cached < prompt and cached % 128 == 0
    assert model["cost"] == pytest.approx(
        (prompt - cached) * 0.15e-6 + cached * 0.075e-6 + model["completionTokens"] * 0.6e-6,
        abs=1e-6,  # costs are rounded to a millionth of a dollar; the discount is ~1e-4
    )
    assert model["cost"] < (prompt * 0.15e-6 + model["completionTokens"] * 0.6e-6)
    assert report["costBreakdown"]["llmCachedPromptTokens"] == cached
    assert report["costBreakdown"]["llmPromptTokens"] == prompt


def test_a_call_ended_without_its_session_reads_with_no_costs() -> None:
    # What an orphan sweep or a refused stream leaves: no usage was ever priced.
    now = datetime.now(UTC)
    record = CallRecord(
        "call_orphan", "tenant", "inboundPhoneCall", "ended", now, now, ended_reason="x"
    )
    out = to_vapi(record)
    assert out["costs"] == [] and out["cost"] == 0
    assert out["costBreakdown"]["total"] == 0 and out["costBreakdown"]["ttsCharacters"] == 0
    # A cost item of a kind this version does not know still counts in the total.
    later = to_vapi(
        CallRecord(
            "call_x", "t", "webCall", "ended", now, now,
            costs=[{"type": "analysis", "cost": 0.002}, {"type": "model", "cost": "bad"}],
        )
    )  # fmt: skip
    assert later["cost"] == 0.002 and later["costBreakdown"]["llm"] == 0


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"voice": {"11labs": {"prices": {"eleven_v3": {"per1KCharacters": -2}}}}}',
         "voice.11labs.prices.eleven_v3.per1KCharacters"),
        ("{not json", "Expecting property name"),
        ('{"model": {"openai": {"prices": {"gpt-4o": {"promptPer1M": 1}}}}}',
         "model.openai.prices.gpt-4o: missing completionPer1M"),
    ],
)  # fmt: skip
def test_a_bad_price_file_stops_startup_naming_the_entry(
    tmp_path: Path, assistant_file: AssistantFactory, content: str, named: str
) -> None:
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(content)
    with pytest.raises(ValidationError) as caught:
        settings_for(assistant_file(), tmp_path, prices_file=prices_file)
    assert f"AVA_PRICES_FILE {prices_file}" in str(caught.value)
    assert named in str(caught.value)


def test_a_missing_price_file_stops_startup(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    with pytest.raises(ValidationError, match="AVA_PRICES_FILE .*nowhere.json"):
        settings_for(assistant_file(), tmp_path, prices_file=tmp_path / "nowhere.json")

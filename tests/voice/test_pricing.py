"""The price table (shipped, merged, validated) and each of Vapi's cost items priced with it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from voice.pricing import (
    EMPTY_PRICES,
    PriceTable,
    PriceTableError,
    load_price_table,
    merge_price_data,
    price_call,
    shipped_price_data,
)

USAGE = {
    "promptTokens": 12_000,
    "cachedPromptTokens": 4_000,
    "completionTokens": 800,
    "characters": 2_400,
}
PROMPT = [{"role": "system", "content": "secret prompt"}]
CLOUD: dict[str, Any] = {
    "transcriber": {"provider": "deepgram", "model": "nova-3", "language": "en"},
    "model": {"provider": "openai", "model": "gpt-4o", "messages": PROMPT},
    "voice": {"provider": "11labs", "voiceId": "rachel"},
}


def items(costs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in costs}


def test_every_shipped_entry_says_where_its_price_comes_from() -> None:
    data = shipped_price_data()
    entries = [
        (f"{section}.{provider}.{model}", entry)
        for section, providers in data.items() if not section.startswith("_")
        for provider, config in providers.items()
        for model, entry in config["prices"].items()
    ]  # fmt: skip
    assert len(entries) >= 30
    for path, entry in entries:
        assert entry["source"] and entry["asOf"].startswith("2025"), path
    PriceTable.from_data(data)  # and the shipped table is valid


def test_a_cloud_call_is_priced_item_by_item_at_list_prices() -> None:
    costs = price_call(load_price_table(), seconds=150, usage=USAGE, transport="twilio", **CLOUD)
    assert [c["type"] for c in costs] == ["transport", "transcriber", "model", "voice", "vapi"]
    by = items(costs)
    # Twilio bills inbound per started minute: 2.5 min → 3 × $0.0085.
    assert by["transport"] == {
        "type": "transport",
        "provider": "twilio",
        "minutes": 2.5,
        "cost": 0.0255,
    }
    # Deepgram Nova-3 streaming, the whole call: 2.5 × $0.0077.
    assert by["transcriber"]["cost"] == 0.01925 and by["transcriber"]["minutes"] == 2.5
    assert by["transcriber"]["transcriber"] == CLOUD["transcriber"]
    # gpt-4o: 8k uncached × $2.50/M + 4k cached × $1.25/M + 800 × $10/M.
    assert by["model"]["cost"] == pytest.approx(0.02 + 0.005 + 0.008)
    assert (by["model"]["promptTokens"], by["model"]["cachedPromptTokens"]) == (12_000, 4_000)
    # The item names the model, never the prompt it ran with.
    assert by["model"]["model"] == {"provider": "openai", "model": "gpt-4o"}
    # ElevenLabs without a model: its default (Flash v2.5), $0.05 per 1k characters.
    assert by["voice"]["cost"] == 0.12 and by["voice"]["characters"] == 2_400
    assert by["vapi"] == {"type": "vapi", "subType": "normal", "minutes": 2.5, "cost": 0}
    assert not any("priced" in c for c in costs)


def test_outbound_dated_snapshots_and_explicit_voice_models() -> None:
    prices = load_price_table()
    costs = items(
        price_call(
            prices, seconds=60, usage=USAGE, transport="twilio", direction="outbound",
            model={"provider": "openai", "model": "gpt-4.1-mini-2025-04-14"},
            voice={"provider": "openai", "voiceId": "alloy", "model": "tts-1-hd"},
        )
    )  # fmt: skip
    assert costs["transport"]["cost"] == 0.014  # exactly one minute: one billed minute
    # The snapshot is priced as gpt-4.1-mini, not as gpt-4.1 (the longer name wins).
    assert costs["model"]["cost"] == pytest.approx(8_000 * 0.4e-6 + 4_000 * 0.1e-6 + 800 * 1.6e-6)
    assert costs["voice"]["cost"] == pytest.approx(2_400 * 30e-6)


def test_offline_engines_and_browser_calls_cost_nothing_but_are_priced() -> None:
    costs = price_call(
        load_price_table(), seconds=42.5, usage=USAGE, transport="webrtc",
        transcriber={"provider": "faster-whisper", "model": "base"},
        model={"provider": "local", "model": "ava-local-responder"},
        voice={"provider": "piper", "voiceId": "en_US-joe-medium"},
    )  # fmt: skip
    assert [c["cost"] for c in costs] == [0, 0, 0, 0, 0]
    assert not any("priced" in c for c in costs)
    assert items(costs)["model"]["completionTokens"] == 800  # usage is reported all the same


def test_an_unknown_provider_or_model_is_priced_zero_and_marked() -> None:
    costs = items(
        price_call(
            load_price_table(), seconds=30, usage=USAGE, transport="vonage",
            transcriber={"provider": "deepgram", "model": "whisper-large"},
            model={"provider": "custom-llm", "model": "my-model"},
            voice={"provider": "openai", "model": "gpt-4o-realtime"},
        )
    )  # fmt: skip
    for kind in ("transport", "transcriber", "model", "voice"):
        assert costs[kind]["cost"] == 0 and costs[kind]["priced"] is False, kind
    assert "priced" not in costs["vapi"]


@pytest.mark.parametrize(
    "usage",
    [{}, {"promptTokens": "12", "completionTokens": None},
     {"promptTokens": -5, "characters": math.nan},
     {"promptTokens": 10, "cachedPromptTokens": 50}, {"characters": True}],
)  # fmt: skip
def test_garbage_usage_never_fails_a_call(usage: dict[str, Any]) -> None:
    costs = items(price_call(EMPTY_PRICES, seconds=-3, usage=usage, transport="twilio", **CLOUD))
    assert costs["transport"]["minutes"] == 0
    assert costs["model"]["cachedPromptTokens"] <= costs["model"]["promptTokens"]
    assert all(c["cost"] == 0 for c in costs.values())
    assert min(costs["voice"]["characters"], costs["model"]["promptTokens"]) >= 0


def test_overrides_merge_over_the_defaults_and_replace_whole_entries() -> None:
    override = {
        "model": {"openai": {"prices": {"gpt-4o": {"promptPer1M": 1, "completionPer1M": 2}}},
                  "together-ai": {"prices": {"*": {"promptPer1M": 0.5, "completionPer1M": 0.5}}}},
        "voice": {"11labs": {"prices": {"eleven_flash_v2_5": {"per1MCharacters": 30}}}},
    }  # fmt: skip
    merged = merge_price_data(shipped_price_data(), override)
    prices = PriceTable.from_data(merged)
    gpt4o = prices.lookup("model", "openai", "gpt-4o")
    assert (
        gpt4o is not None and gpt4o.cached_prompt == gpt4o.prompt == 1e-6
    )  # cached: the prompt price
    assert prices.lookup("model", "openai", "gpt-4o-mini") == load_price_table().lookup(
        "model", "openai", "gpt-4o-mini"
    )  # untouched defaults stay
    assert prices.lookup("model", "together-ai", "meta-llama/Llama-3-70b") is not None
    flash = prices.lookup("voice", "11labs", None)  # switched units: no per1K left behind
    assert flash is not None and flash.per_character == pytest.approx(30e-6)
    assert merged["voice"]["11labs"]["defaultModel"] == "eleven_flash_v2_5"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"openai": {"prices": {"gpt-4o": {"promptPer1M": -1, "completionPer1M": 1}}}}},
         "model.openai.prices.gpt-4o.promptPer1M: must be a number from 0"),
        ({"model": {"openai": {"prices": {"o": {"promptPer1M": "2.5", "completionPer1M": 1}}}}},
         "model.openai.prices.o.promptPer1M"),
        ({"model": {"openai": {"prices": {"gpt-x": {"promptPer1M": 1}}}}},
         "model.openai.prices.gpt-x: missing completionPer1M"),
        ({"voice": {"piper": {"prices": {"*": {"perMinute": 0}}}}},
         "voice.piper.prices.*.perMinute: unknown field for voice"),
        ({"voice": {"x": {"prices": {"m": {"per1KCharacters": 1, "per1MCharacters": 1}}}}},
         "voice.x.prices.m: exactly one of"),
        ({"transport": {"twilio": {"prices": {"inbound": {"perMinute": True}}}}},
         "transport.twilio.prices.inbound.perMinute"),
        ({"transport": {"twilio": {"rates": {}}}}, "transport.twilio.rates: unknown field"),
        ({"telephony": {}}, "telephony: unknown section"),
        ({"model": {"openai": {"prices": {"gpt-4o": 2.5}}}},
         "model.openai.prices.gpt-4o: must be a JSON object"),
        ({"model": {"openai": {"prices": {"gpt-4o": {"promptPer1M": 1, "completionPer1M": 1e9}}}}},
         "completionPer1M: must be a number from 0 to 1e+06"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_by_name(override: dict[str, Any], message: str) -> None:
    with pytest.raises(PriceTableError) as caught:
        load_price_table(override)
    assert message in str(caught.value)


def test_comments_are_allowed_anywhere_and_an_entry_is_replaced_whole() -> None:
    contract = {"perMinute": 0.004, "_negotiated": True, "source": "ours", "asOf": "2026-01"}
    prices = load_price_table(
        {"_note": "ours", "transport": {"_why": "contract", "twilio": {"_n": 1, "prices": {
            "inbound": contract,
        }}}}
    )  # fmt: skip
    inbound = prices.lookup("transport", "twilio", "inbound")
    # The shipped per-started-minute increment went with the entry it replaced: per second now.
    assert inbound is not None and inbound.minutes_cost(30) == pytest.approx(0.002)

"""What a call cost: a price table per provider and model, and Vapi's `costs[]` priced with it.

Sans-I/O except `shipped_price_data()`, which reads the defaults shipped in
`voice/data/prices.json` (public list prices, each entry with its source and date). The operator's
overrides (`AVA_PRICES_FILE`, read by control/settings.py) have the same shape and are merged over
them with `merge_price_data`: mappings merge key by key down to a model's entry, which is replaced
whole (so an entry can switch units without leaving the other unit behind).

The table's shape, per section (`transport`, `transcriber`, `model`, `voice`):

    {"<provider>": {"defaultModel": "<model>", "prices": {"<model>": {<entry>}}}}

Entries: `perMinute` (+ `billingIncrementSeconds`, default 1: Twilio bills per started minute)
for `transport` (keyed by direction, `inbound` / `outbound`, or `*`) and `transcriber`;
`promptPer1M`, `completionPer1M`, `cachedPromptPer1M` (default: the prompt price) for `model`;
one of `per1KCharacters` / `per1MCharacters` for `voice`. `source` and `asOf` document an entry;
keys starting with `_` are comments. A model matches its own entry, else the entry of its name
without a dated snapshot suffix (`gpt-4o-2024-08-06` → `gpt-4o`), else the provider's `*`.

`price_call` never fails on a call's data: a provider or model the table does not know is priced 0
and its item marked `"priced": false`, so an operator can see what to add to the table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "COST_DECIMALS",
    "EMPTY_PRICES",
    "Price",
    "PriceTable",
    "PriceTableError",
    "load_price_table",
    "merge_price_data",
    "price_call",
    "shipped_price_data",
]

Section = Literal["transport", "transcriber", "model", "voice"]
SECTIONS: tuple[Section, ...] = ("transport", "transcriber", "model", "voice")
COST_DECIMALS = 6  # USD: a millionth of a dollar is below any provider's own rounding
_MINUTES_DECIMALS = 4
_SHIPPED = Path(__file__).resolve().parent / "data" / "prices.json"
_NOTES = frozenset({"source", "asOf"})
_FIELDS: dict[Section, frozenset[str]] = {
    "transport": frozenset({"perMinute", "billingIncrementSeconds"}),
    "transcriber": frozenset({"perMinute", "billingIncrementSeconds"}),
    "model": frozenset({"promptPer1M", "completionPer1M", "cachedPromptPer1M"}),
    "voice": frozenset({"per1KCharacters", "per1MCharacters"}),
}
_REQUIRED: dict[Section, frozenset[str]] = {
    "transport": frozenset({"perMinute"}),
    "transcriber": frozenset({"perMinute"}),
    "model": frozenset({"promptPer1M", "completionPer1M"}),
    "voice": frozenset(),  # exactly one of its two units, checked apart
}
_MAX_PRICE = 1_000_000.0  # far above any real rate: a larger number is a typo
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
# What of an assistant's config a cost item names (Vapi puts the whole object there; its prompt
# and tools would make every stored call carry them again, and the prompt may hold call data).
_IDENTITY = {
    "transcriber": ("provider", "model", "language"),
    "model": ("provider", "model"),
    "voice": ("provider", "voiceId", "model"),
}


class PriceTableError(ValueError):
    """A price table entry is not valid; the message names it (`voice.11labs.prices.x: …`)."""


@dataclass(frozen=True, slots=True)
class Price:
    """One entry, in USD per unit (per minute, per token, per character)."""

    per_minute: float = 0.0
    increment_seconds: float = 1.0
    prompt: float = 0.0
    cached_prompt: float = 0.0
    completion: float = 0.0
    per_character: float = 0.0

    def minutes_cost(self, seconds: float) -> float:
        step = self.increment_seconds
        billed = math.ceil(seconds / step - 1e-9) * step if step > 0 else seconds
        return billed / 60 * self.per_minute


@dataclass(frozen=True, slots=True)
class _Provider:
    default_model: str | None
    prices: Mapping[str, Price]

    def lookup(self, model: str | None) -> Price | None:
        name = (model or self.default_model or "").lower()
        if name:
            price = self.prices.get(name)
            if price is None:
                price = self.prices.get(_SNAPSHOT.sub("", name))
            if price is not None:
                return price
        return self.prices.get("*")


@dataclass(frozen=True, slots=True)
class PriceTable:
    providers: Mapping[tuple[Section, str], _Provider]

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> PriceTable:
        """Validate a table (the merged JSON); raises PriceTableError naming the bad entry."""
        if not isinstance(data, Mapping):
            raise PriceTableError("the price table must be a JSON object")
        providers: dict[tuple[Section, str], _Provider] = {}
        for key, section in data.items():
            if key.startswith("_"):
                continue
            if key not in SECTIONS:
                raise PriceTableError(f"{key}: unknown section (one of {', '.join(SECTIONS)})")
            name: Section = key
            for provider, config in _object(section, key).items():
                if not provider.startswith("_"):
                    path = f"{key}.{provider}"
                    providers[(name, provider)] = _parse_provider(name, config, path)
        return cls(providers)

    def lookup(self, section: Section, provider: str, model: str | None) -> Price | None:
        entry = self.providers.get((section, provider))
        return None if entry is None else entry.lookup(model)


EMPTY_PRICES = PriceTable({})


def shipped_price_data() -> dict[str, Any]:
    """The defaults shipped with AVA (`voice/data/prices.json`)."""
    data: dict[str, Any] = json.loads(_SHIPPED.read_text(encoding="utf-8"))
    return data


def merge_price_data(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key; a model's entry is replaced whole."""
    return _merge(base, override, depth=0)


def load_price_table(override: Mapping[str, Any] | None = None) -> PriceTable:
    """The shipped defaults with the operator's `override` merged over them, validated."""
    data = shipped_price_data()
    if override is not None:
        if not isinstance(override, Mapping):
            raise PriceTableError("the price table must be a JSON object")
        data = merge_price_data(data, override)
    return PriceTable.from_data(data)


def price_call(
    prices: PriceTable,
    *,
    seconds: float,
    usage: Mapping[str, Any],
    transport: str,
    direction: str = "inbound",
    transcriber: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    voice: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Vapi's `costs[]` for one call: transport, transcriber, model, voice, vapi (AVA's fee: 0).

    `seconds`: the call's duration (a streamed transcriber bills the whole stream, so it is the
    transcriber's minutes too); `usage`: the session's `promptTokens`, `completionTokens`,
    `cachedPromptTokens` (part of the prompt tokens), `characters`; `transport`: the media
    transport's kind (`twilio`, `webrtc`); `direction`: `inbound` or `outbound`."""
    seconds = max(_number(seconds), 0.0)
    minutes = round(seconds / 60, _MINUTES_DECIMALS)
    prompt = _count(usage.get("promptTokens"))
    cached = min(_count(usage.get("cachedPromptTokens")), prompt)
    completion = _count(usage.get("completionTokens"))
    characters = _count(usage.get("characters"))
    transcriber, model, voice = transcriber or {}, model or {}, voice or {}

    costs: list[dict[str, Any]] = []
    price = prices.lookup("transport", transport, direction)
    costs.append(
        _item({"type": "transport", "provider": transport, "minutes": minutes},
              None if price is None else price.minutes_cost(seconds))
    )  # fmt: skip
    price = prices.lookup("transcriber", _str(transcriber, "provider"), _str(transcriber, "model"))
    costs.append(
        _item({"type": "transcriber", "transcriber": _identity("transcriber", transcriber),
               "minutes": minutes}, None if price is None else price.minutes_cost(seconds))
    )  # fmt: skip
    price = prices.lookup("model", _str(model, "provider"), _str(model, "model"))
    llm = None
    if price is not None:
        llm = (
            (prompt - cached) * price.prompt
            + cached * price.cached_prompt
            + completion * price.completion
        )
    costs.append(
        _item({"type": "model", "model": _identity("model", model), "promptTokens": prompt,
               "completionTokens": completion, "cachedPromptTokens": cached}, llm)
    )  # fmt: skip
    price = prices.lookup("voice", _str(voice, "provider"), _str(voice, "model"))
    costs.append(
        _item({"type": "voice", "voice": _identity("voice", voice), "characters": characters},
              None if price is None else characters * price.per_character)
    )  # fmt: skip
    costs.append({"type": "vapi", "subType": "normal", "minutes": minutes, "cost": 0})
    return costs


# --- parsing ---------------------------------------------------------------------------------


def _parse_provider(section: Section, config: Any, path: str) -> _Provider:
    config = _object(config, path)
    default = config.get("defaultModel")
    if default is not None and not isinstance(default, str):
        raise PriceTableError(f"{path}.defaultModel: must be a string")
    for key in config:
        if key not in ("defaultModel", "prices") and not key.startswith("_"):
            raise PriceTableError(f"{path}.{key}: unknown field (defaultModel, prices)")
    prices = {
        model.lower(): _parse_entry(section, entry, f"{path}.prices.{model}")
        for model, entry in _object(config.get("prices", {}), f"{path}.prices").items()
        if not model.startswith("_")
    }
    return _Provider(default, prices)


def _parse_entry(section: Section, entry: Any, path: str) -> Price:
    entry = _object(entry, path)
    values: dict[str, float] = {}
    for key, value in entry.items():
        if key in _NOTES or key.startswith("_"):
            if key in _NOTES and not isinstance(value, str):
                raise PriceTableError(f"{path}.{key}: must be a string")
            continue
        if key not in _FIELDS[section]:
            fields = ", ".join(sorted(_FIELDS[section]))
            raise PriceTableError(f"{path}.{key}: unknown field for {section} ({fields})")
        values[key] = _price(value, f"{path}.{key}")
    missing = sorted(_REQUIRED[section] - values.keys())
    if missing:
        raise PriceTableError(f"{path}: missing {', '.join(missing)}")
    if section == "voice":
        units = [k for k in ("per1KCharacters", "per1MCharacters") if k in values]
        if len(units) != 1:
            raise PriceTableError(f"{path}: exactly one of per1KCharacters, per1MCharacters")
        per_char = values[units[0]] / (1e3 if units[0] == "per1KCharacters" else 1e6)
        return Price(per_character=per_char)
    if section == "model":
        prompt = values["promptPer1M"] / 1e6
        cached = values.get("cachedPromptPer1M")
        return Price(
            prompt=prompt,
            cached_prompt=prompt if cached is None else cached / 1e6,
            completion=values["completionPer1M"] / 1e6,
        )
    return Price(
        per_minute=values["perMinute"],
        increment_seconds=values.get("billingIncrementSeconds", 1.0),
    )


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PriceTableError(f"{path}: must be a JSON object")
    return value


def _price(value: Any, path: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_PRICE
    ):
        raise PriceTableError(f"{path}: must be a number from 0 to {_MAX_PRICE:g}, not {value!r}")
    return float(value)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any], depth: int) -> dict[str, Any]:
    # depth 0: sections, 1: providers, 2: a provider's fields, 3: its prices by model
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if depth < 3 and isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(old, value, depth + 1)
        else:
            out[key] = value
    return out


# --- pricing ---------------------------------------------------------------------------------


def _item(fields: dict[str, Any], cost: float | None) -> dict[str, Any]:
    if cost is None:
        return {**fields, "cost": 0, "priced": False}
    return {**fields, "cost": round(cost, COST_DECIMALS)}


def _identity(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in _IDENTITY[kind] if isinstance(config.get(k), str | int | float)}


def _str(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _count(value: Any) -> int:
    return max(int(_number(value)), 0)

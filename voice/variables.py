"""Vapi's `{{variable}}` templates in an assistant: checking, built-ins, rendering, overrides.

Vapi renders its assistants' text with LiquidJS; AVA uses python-liquid, the same language
(filters, `default`, `if`, `for`). Templates come from tenants, so they are untrusted: they see
only the variables given (no loader, so no `include`/`render`, no globals), and parsing and
rendering are bounded (template size by the assistant's own field limits, loop iterations,
output size, nesting and context depth, local variables). Pure: no I/O, the time is given.

Where templates are (`template_fields`): `firstMessage`, `endCallMessage`, `voicemailMessage`,
`model.messages[].content`, and in each tool its `description`, `function.description`,
`messages[].content` and its transfer `destinations[]` `message`, `description` and
`transferPlan.message` (what a warm transfer tells the person it reaches).

A variable a template names but the call does not have renders empty (Liquid's rule, as on Vapi)
and is reported, so the call's record can list it.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from liquid import Environment, Undefined
from liquid.exceptions import LiquidError, ResourceLimitError
from liquid.template import BoundTemplate

__all__ = [
    "MAX_TEMPLATE_OUTPUT",
    "Rendered",
    "TemplateError",
    "builtin_variables",
    "check_template",
    "check_templates",
    "check_tool_templates",
    "has_template",
    "merge_overrides",
    "render_templates",
    "template_fields",
]

MAX_LOOP_ITERATIONS = 1000  # all loops of one template together
MAX_TEMPLATE_OUTPUT = 200_000  # characters one template may render: past the prompt bound
MAX_LOCALS = 64 * 1024  # bytes of `assign`/`capture` values in one template
MAX_NESTING = 12  # nested blocks (`if` in `for` in …)
MAX_CONTEXT_DEPTH = 8
MAX_UNKNOWN = 100  # unknown variables listed per call; past it the list says "…"
# Tags a template may not use: they read other templates, and there are none to read.
_BANNED_TAGS = ("include", "render")
# Text without these cannot hold a Liquid statement or tag; it is not parsed at all.
_MARKERS = ("{{", "{%")

# The unknown variables of the render in progress (rendering is synchronous, so one context
# variable per render is exact), and the render's "now" for the `date` filter.
_unknown: ContextVar[list[str] | None] = ContextVar("ava_liquid_unknown", default=None)
_now: ContextVar[dt.datetime | None] = ContextVar("ava_liquid_now", default=None)


class TemplateError(ValueError):
    """A template that does not parse or whose rendering hit a limit; names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class _Recording(Undefined):
    """Renders empty, like Liquid's default, and notes its name for the call's record."""

    __slots__ = ()

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        seen = _unknown.get()
        # python-liquid makes an untokened "parentloop" for every top-level `for`: not a
        # variable the template named.
        internal = name == "parentloop" and kwargs.get("token") is None
        if seen is not None and not internal:
            seen.append(_path(name, self.hint))


def _path(root: str, hint: str | None) -> str:
    # python-liquid's hint is "'name' is undefined" or "customer.name is undefined".
    if hint and hint.endswith(" is undefined"):
        return hint.removesuffix(" is undefined").strip("'")
    return root


def _date(value: object, fmt: object = None, zone: object = None) -> str:
    """LiquidJS's `date`: strftime `fmt`, in time zone `zone` (IANA name) if given. "now" and
    "today" are the render's time (injected), not the server clock."""
    when: dt.datetime | None
    if isinstance(value, dt.datetime):
        when = value
    elif value in ("now", "today"):
        when = _now.get() or dt.datetime.now(dt.UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        when = dt.datetime.fromtimestamp(value, dt.UTC)
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # Liquid returns what it cannot read as a date unchanged
    else:
        return "" if value is None or isinstance(value, Undefined) else str(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if isinstance(zone, str) and zone:
        when = when.astimezone(_zone(zone))
    if not isinstance(fmt, str) or not fmt:
        return when.isoformat()
    return when.strftime(fmt)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise LiquidError(f"unknown time zone {name!r}", token=None) from exc


class _Env(Environment):
    loop_iteration_limit: ClassVar[int | None] = MAX_LOOP_ITERATIONS
    output_stream_limit: ClassVar[int | None] = MAX_TEMPLATE_OUTPUT
    local_namespace_limit: ClassVar[int | None] = MAX_LOCALS
    block_nesting_limit: ClassVar[int] = MAX_NESTING
    context_depth_limit: ClassVar[int] = MAX_CONTEXT_DEPTH

    def __init__(self) -> None:
        super().__init__(undefined=_Recording, strict_filters=True)
        for tag in _BANNED_TAGS:
            self.tags.pop(tag, None)
        self.filters["date"] = _date


_ENV = _Env()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse(text: str, field: str) -> BoundTemplate:
    try:
        template = _ENV.from_string(text)
        unknown_filters = sorted(set(template.filter_names()) - set(_ENV.filters))
    except LiquidError as exc:
        raise TemplateError(field, f"template does not parse: {_first_line(exc)}") from exc
    if unknown_filters:
        raise TemplateError(field, f"template uses unknown filter {unknown_filters[0]!r}")
    return template


def has_template(text: object) -> bool:
    """Whether `text` holds Liquid markup (so it differs from call to call)."""
    return isinstance(text, str) and any(marker in text for marker in _MARKERS)


def check_template(text: object, field: str) -> None:
    """Raises TemplateError (a ValueError naming `field`) when `text` is not a valid template."""
    if has_template(text):
        assert isinstance(text, str)
        _parse(text, field)


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _tool_fields(tool: Mapping[str, Any], where: str) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path inside `tool`, field name) of each template a tool may hold."""
    yield ("description",), _at(where, "description")
    function = tool.get("function")
    if isinstance(function, Mapping):
        yield ("function", "description"), _at(where, "function.description")
    messages = tool.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, Mapping):
                yield ("messages", i, "content"), _at(where, f"messages[{i}].content")
    destinations = tool.get("destinations")
    if isinstance(destinations, list):
        for i, destination in enumerate(destinations):
            if isinstance(destination, Mapping):
                for name in ("message", "description"):
                    yield ("destinations", i, name), _at(where, f"destinations[{i}].{name}")
                if isinstance(destination.get("transferPlan"), Mapping):
                    yield (
                        ("destinations", i, "transferPlan", "message"),
                        _at(where, f"destinations[{i}].transferPlan.message"),
                    )


def check_tool_templates(tool: Mapping[str, Any], where: str = "") -> None:
    """Raises TemplateError for the first template in a tool that does not parse."""
    for path, field in _tool_fields(tool, where):
        check_template(_get(tool, path), field)


def template_fields(data: Mapping[str, Any]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, field name) of every place of an assistant's JSON (camelCase) that is a template;
    the path may lead nowhere (an absent field)."""
    for name in ("firstMessage", "endCallMessage", "voicemailMessage"):
        yield (name,), name
    hooks = data.get("hooks")
    for i, hook in enumerate(hooks if isinstance(hooks, list) else ()):
        actions = hook.get("do") if isinstance(hook, Mapping) else None
        for j, action in enumerate(actions if isinstance(actions, list) else ()):
            exact = action.get("exact") if isinstance(action, Mapping) else None
            where = f"hooks[{i}].do[{j}].exact"
            if isinstance(exact, list):
                for k in range(len(exact)):
                    yield ("hooks", i, "do", j, "exact", k), f"{where}[{k}]"
            else:
                yield ("hooks", i, "do", j, "exact"), where
    model = data.get("model")
    if not isinstance(model, Mapping):
        return
    messages = model.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, Mapping):
                yield ("model", "messages", i, "content"), f"model.messages[{i}].content"
    tools = model.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if isinstance(tool, Mapping):
                for path, field in _tool_fields(tool, f"model.tools[{i}]"):
                    yield ("model", "tools", i, *path), field


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(data, Mapping):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _set(data: Any, path: tuple[Any, ...], value: str) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def check_templates(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One message per template in an assistant's JSON that does not parse (empty: none)."""
    problems = []
    for path, field in template_fields(data):
        try:
            check_template(_get(data, path), _at(prefix, field))
        except TemplateError as exc:
            problems.append(str(exc))
    return problems


@dataclass(frozen=True, slots=True)
class Rendered:
    """An assistant's JSON with its templates rendered, the variables they named that the
    call did not have (sorted, each once), and how many templates there were."""

    data: dict[str, Any]
    unknown: tuple[str, ...]
    templates: int = 0


def render_templates(
    data: Mapping[str, Any], variables: Mapping[str, Any], now: dt.datetime
) -> Rendered:
    """Render every template of an assistant's JSON with `variables` (JSON values) at `now`
    (what the `date` filter's "now" is). `data` is not changed. Raises TemplateError naming
    the field for a template that does not parse or that hits a limit while rendering."""
    out = copy.deepcopy(dict(data))
    unknown: list[str] = []
    count = 0
    context = dict(variables)
    for path, field in list(template_fields(out)):
        text = _get(out, path)
        if not has_template(text):
            continue
        assert isinstance(text, str)
        template = _parse(text, field)
        seen: list[str] = []
        unknown_token, now_token = _unknown.set(seen), _now.set(now)
        try:
            rendered = template.render(context)
        except ResourceLimitError as exc:
            raise TemplateError(field, f"rendering stopped at a limit: {_first_line(exc)}") from exc
        except LiquidError as exc:
            raise TemplateError(field, f"rendering failed: {_first_line(exc)}") from exc
        finally:
            _unknown.reset(unknown_token)
            _now.reset(now_token)
        _set(out, path, rendered)
        unknown.extend(seen)
        count += 1
    names = sorted(set(unknown))
    if len(names) > MAX_UNKNOWN:
        names = [*names[:MAX_UNKNOWN], "…"]
    return Rendered(out, tuple(names), count)


def builtin_variables(
    now: dt.datetime,
    *,
    customer: Mapping[str, Any] | None = None,
    timezone: str | None = None,
) -> dict[str, Any]:
    """Vapi's built-in variables at `now`: `now` ("Jan 1, 2024 12:00 PM"), `date`
    ("Jan 1, 2024"), `time` ("12:00 PM"), `month` ("January"), `day` ("1"), `year` ("2024"),
    and `customer` (`customer.number`, and whatever else is known of the customer). Vapi gives
    them in UTC; `timezone` (an IANA name) gives them in local time instead. Raises ValueError
    for an unknown time zone."""
    when = now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)
    if timezone:
        try:
            when = when.astimezone(ZoneInfo(timezone))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc
    else:
        when = when.astimezone(dt.UTC)
    clock = f"{when.hour % 12 or 12}:{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}"
    date = f"{when:%b} {when.day}, {when.year}"
    return {
        "now": f"{date} {clock}",
        "date": date,
        "time": clock,
        "month": f"{when:%B}",
        "day": str(when.day),
        "year": str(when.year),
        "customer": {k: v for k, v in (customer or {}).items() if v is not None},
    }


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Vapi's `assistantOverrides` on an assistant's JSON: objects merge key by key (deeply),
    anything else (lists included) replaces; `tools:append` adds tools to `model.tools`.
    Neither argument is changed. Raises ValueError for a `tools:append` that is not a list."""
    extra = overrides.get("tools:append")
    if extra is not None and not isinstance(extra, list):
        raise ValueError("tools:append must be a list of tools")
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if key == "tools:append":
            continue
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge_overrides(current, value)
        else:
            out[key] = copy.deepcopy(value)
    if isinstance(extra, list) and extra:
        model = out.get("model")
        model = dict(model) if isinstance(model, Mapping) else {}
        tools = model.get("tools")
        model["tools"] = [*(tools if isinstance(tools, list) else []), *copy.deepcopy(extra)]
        out["model"] = model
    return out

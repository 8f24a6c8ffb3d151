"""Property-based tests of the assistant and tool schemas and the JSON bounds under them.

The contract: any JSON a tenant can send (bounded in size, not in shape or depth) either
validates or is refused with the schema's own error (pydantic's ValidationError, ValueError
from a tool check, ConfigError when a call is built from it), never another exception such as
RecursionError or TypeError; what validates round-trips through `to_json`; and the raw-text
depth scan agrees with the parsed value's depth.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from storage.resources import _tool_json
from voice.assistant import Assistant, ModelConfig, check_server
from voice.errors import ConfigError
from voice.json_bounds import MAX_DEPTH, JsonBounds, JsonTooComplex, check_json, text_depth
from voice.server_messages import ServerTarget
from voice.tools import ToolSet

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities too: json.loads accepts them
    | st.text(max_size=12)
)


def json_of(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=25,
    )


json_values = json_of(scalars)


def wrapped(value: Any, depth: int) -> Any:
    """`value` inside `depth` single-key objects: the depth limit's neighbourhood."""
    for _ in range(depth):
        value = {"a": value}
    return value


deep_values = st.builds(wrapped, json_values, st.integers(0, MAX_DEPTH + 8))
any_value = json_values | deep_values

urls = st.sampled_from(
    ["https://example.com/hook", "http://127.0.0.1:9/x", "file:///etc/passwd", "ftp://x", "", "x"]
) | st.text(max_size=20)
servers = st.fixed_dictionaries(
    {},
    optional={
        "url": urls | any_value,
        "timeoutSeconds": st.none()
        | st.floats()
        | st.integers(-5, 500)
        | st.text(max_size=5)
        | any_value,
        "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=8)) | any_value,
        "secret": st.text(max_size=8) | any_value,
    },
)
tools = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["function", "endCall", "transferCall", ""]) | any_value,
        "function": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=10) | any_value, "parameters": any_value}
        )
        | any_value,
        "server": servers | any_value,
        "destinations": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "type": st.just("number"),
                    "number": st.sampled_from(["+14155550123", "nope"]),
                    "server": servers,
                },
            ),
            max_size=3,
        )
        | any_value,
    },
)
models = st.fixed_dictionaries(
    {},
    optional={
        "provider": st.sampled_from(["local", "openai", "custom-llm", "nope"]) | any_value,
        "url": urls | any_value,
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("system"), "content": st.text(max_size=30)})
            | any_value,
            max_size=3,
        )
        | any_value,
        "tools": st.lists(tools, max_size=3) | any_value,
        "toolIds": st.lists(st.text(max_size=5), max_size=3) | any_value,
        "fallbackModels": st.lists(st.fixed_dictionaries({}, optional={"url": urls}), max_size=2)
        | any_value,
        "temperature": st.floats() | any_value,
    },
)
assistants = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=50) | any_value,
        "firstMessage": st.text(max_size=20) | any_value,
        "endCallMessage": st.text(max_size=20) | any_value,
        "endCallPhrases": st.lists(st.text(max_size=10), max_size=4) | any_value,
        "model": models | any_value,
        "server": servers | any_value,
        "serverUrl": urls | any_value,
        "serverUrlSecret": any_value,
        "metadata": any_value,
        "analysisPlan": any_value,  # an extra field: kept as sent, bounded all the same
        "silenceTimeoutSeconds": st.floats() | any_value,
    },
)


def build_call_config(assistant: Assistant) -> None:
    """What control does with a valid assistant before a call: its tools and its server."""
    ToolSet.from_model(assistant.model)
    ServerTarget.from_config(assistant.server)


@PROPS
@given(assistants | any_value)
@example({"server": {"url": "https://x", "timeoutSeconds": None}})
@example({"metadata": wrapped(1, 900)})
@example({"model": {"tools": [{"type": "function", "function": wrapped(1, 900)}]}})
def test_any_json_validates_or_is_a_validation_error(data: Any) -> None:
    try:
        assistant = Assistant.model_validate(data)
    except ValidationError:
        return
    # Valid at save time means usable at call time: the bad server config is refused above.
    try:
        build_call_config(assistant)
    except ConfigError:
        pass  # tool semantics (names, destinations) are checked when a call is built


@PROPS
@given(assistants)
def test_a_valid_assistant_round_trips_through_to_json(data: dict[str, Any]) -> None:
    try:
        assistant = Assistant.model_validate(data)
    except ValidationError:
        return
    dumped = assistant.to_json()
    if _has_nan(dumped):
        return  # NaN != NaN: the round trip holds, equality cannot show it
    again = Assistant.model_validate(dumped)
    assert again.to_json() == dumped
    assert json.loads(json.dumps(dumped)) == dumped  # plain JSON, storable as is


def _has_nan(value: Any) -> bool:
    return "NaN" in json.dumps(value)


@PROPS
@given(tools | any_value)
@example({"type": "function", "function": {"name": "f", "parameters": wrapped(1, 900)}})
@example({"type": "function", "server": {"url": "https://x", "timeoutSeconds": None}})
def test_any_tool_is_stored_or_refused_with_a_value_error(tool: Any) -> None:
    if not isinstance(tool, dict):
        return  # the route takes JSON objects only
    try:
        stored = _tool_json(tool)
    except ValueError:
        return
    # A storable tool never breaks a call's build with anything but a ConfigError.
    try:
        ModelConfig(tools=[stored])
    except ValidationError:
        pytest.fail("a tool /tool accepts must be acceptable in model.tools")
    try:
        ToolSet.from_model(ModelConfig(tools=[stored]))
    except ConfigError:
        pass


@PROPS
@given(servers | any_value)
@example({"url": "https://x", "timeoutSeconds": None})
@example({"url": "https://x", "timeoutSeconds": [1]})
def test_server_target_agrees_with_the_save_time_check(server: Any) -> None:
    """What saves builds a ServerTarget; what does not is refused with a ValueError by both."""
    try:
        check_server(server)
    except ValueError:
        saved = False
    else:
        saved = True
    if not isinstance(server, dict):
        return
    try:
        target = ServerTarget.from_config(server)
    except ValueError:
        assert not saved, server
        return
    if target is not None:
        assert 1 <= target.timeout_seconds <= 300 and not math.isnan(target.timeout_seconds)


def _depth(value: Any) -> int:
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = (
            list(item.values()) if isinstance(item, dict)
            else item if isinstance(item, list)
            else None
        )  # fmt: skip
        if children is None:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth


@PROPS
@given(any_value)
def test_text_depth_and_check_json_agree_with_the_value(value: Any) -> None:
    depth = _depth(value)
    assert text_depth(json.dumps(value).encode(), stop_above=10_000) == depth
    try:
        check_json(value, JsonBounds(max_depth=MAX_DEPTH, max_string_chars=10))
    except JsonTooComplex as exc:
        assert depth > MAX_DEPTH or "longer than 10" in exc.problem
    else:
        assert depth <= MAX_DEPTH


def test_check_json_does_not_recurse() -> None:
    deep = wrapped([1], 50_000)  # far past the interpreter's recursion limit
    with pytest.raises(JsonTooComplex, match="nested deeper than 32 levels"):
        check_json(deep)
    text = ("[" * 50_000 + "]" * 50_000).encode()
    assert text_depth(text, stop_above=MAX_DEPTH) == MAX_DEPTH + 1  # stops scanning early
    assert text_depth(text, stop_above=100_000) == 50_000

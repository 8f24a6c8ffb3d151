"""`{{variable}}` templates: Vapi's built-ins, Liquid filters and defaults, unknown variables,
the limits on untrusted templates, parse errors naming the field, and assistantOverrides."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from voice.assistant import Assistant, personalize, with_overrides
from voice.errors import ConfigError
from voice.greeting import GreetingCache
from voice.testing import ToneTts
from voice.variables import (
    MAX_TEMPLATE_OUTPUT,
    TemplateError,
    builtin_variables,
    check_templates,
    merge_overrides,
    render_templates,
)

NOW = dt.datetime(2026, 3, 7, 21, 5, tzinfo=dt.UTC)  # a Saturday, 9:05 PM UTC
CUSTOMER = {"number": "+15557654321"}


def render(text: str, **variables: Any) -> tuple[str, tuple[str, ...]]:
    values = {**builtin_variables(NOW, customer=CUSTOMER), **variables}
    rendered = render_templates({"firstMessage": text}, values, NOW)
    return rendered.data["firstMessage"], rendered.unknown


def test_builtins_are_vapis() -> None:
    values = builtin_variables(NOW, customer=CUSTOMER)
    assert values == {
        "now": "Mar 7, 2026 9:05 PM",
        "date": "Mar 7, 2026",
        "time": "9:05 PM",
        "month": "March",
        "day": "7",
        "year": "2026",
        "customer": {"number": "+15557654321"},
    }
    # In a time zone, the local time (and date: already Sunday in Tokyo).
    local = builtin_variables(NOW, timezone="America/New_York")
    assert local["time"] == "4:05 PM" and local["date"] == "Mar 7, 2026"
    assert builtin_variables(NOW, timezone="Asia/Tokyo")["now"] == "Mar 8, 2026 6:05 AM"
    with pytest.raises(ValueError, match="time zone"):
        builtin_variables(NOW, timezone="Mars/Olympus")


def test_variables_filters_and_defaults_render() -> None:
    text, unknown = render(
        "Hi {{ name | capitalize }}, calling {{ customer.number }} on {{ date }}. "
        "{{ plan | default: 'basic' | upcase }} plan; {{ items | size }} items.",
        name="ada",
        items=["a", "b", "c"],
    )
    assert text == "Hi Ada, calling +15557654321 on Mar 7, 2026. BASIC plan; 3 items."
    assert unknown == ("plan",)  # not given: the default stood in, and the call says so


def test_date_filter_uses_the_calls_time_and_a_time_zone() -> None:
    text, _ = render('{{ "now" | date: "%A %H:%M" }} / {{ "now" | date: "%H:%M", "Asia/Tokyo" }}')
    assert text == "Saturday 21:05 / 06:05"
    with pytest.raises(TemplateError, match="firstMessage: rendering failed: unknown time zone"):
        render('{{ "now" | date: "%H", "Nowhere/City" }}')


def test_unknown_variables_render_empty_and_are_listed() -> None:
    text, unknown = render("Hello {{ customer.name }}{{ first }}! {{ first }} {{ account.id }}")
    assert text == "Hello !  "
    # sorted, once each; an unknown object by its own name
    assert unknown == ("account", "customer.name", "first")


def test_control_flow_works_within_the_limits() -> None:
    text, unknown = render(
        "{% if vip %}Welcome back{% else %}Welcome{% endif %}"
        "{% for o in orders %} #{{ o.id }}{% endfor %}",
        vip=True,
        orders=[{"id": 1}, {"id": 2}],
    )
    assert text == "Welcome back #1 #2" and unknown == ()


@pytest.mark.parametrize(
    ("template", "variables", "limit"),
    [
        ("{% for i in (1..100000) %}x{% endfor %}", {}, "loop iteration"),
        # a variable's own size is the tenant's data; the template multiplies it past the bound
        ("{% for i in (1..900) %}{{ big }}{% endfor %}", {"big": "y" * 1000}, "output"),
        (
            "{% assign s = 'ab' %}{% for i in (1..30) %}{% assign s = s | append: s %}{% endfor %}",
            {},
            "namespace",
        ),
    ],
)
def test_limits_stop_runaway_templates(
    template: str, variables: dict[str, Any], limit: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, **variables)
    assert caught.value.field == "firstMessage"
    assert "rendering stopped at a limit" in str(caught.value)
    assert limit in str(caught.value).lower()
    assert MAX_TEMPLATE_OUTPUT < 900 * 1000


def test_templates_see_only_the_variables_given() -> None:
    # No loader, no globals: include/render do not parse; Python attributes are not reachable.
    problems = check_templates(
        {
            "firstMessage": "{% include 'secrets' %}",
            "endCallMessage": "{% render 'x' %}",
            "voicemailMessage": "{{ name | no_such_filter }}",
        }
    )
    assert problems == [
        "firstMessage: template does not parse: unexpected tag 'include'",
        "endCallMessage: template does not parse: unexpected tag 'render'",
        "voicemailMessage: template uses unknown filter 'no_such_filter'",
    ]
    text, unknown = render("{{ name.__class__ }}{{ name.upper }}", name="ada")
    assert text == "" and set(unknown) == {"name.__class__", "name.upper"}


def test_parse_errors_name_every_templated_field() -> None:
    data = {
        "firstMessage": "Hi {{ name",
        "model": {
            "messages": [
                {"role": "system", "content": "ok"},
                {"role": "user", "content": "{% if %}"},
            ],
            "tools": [
                {
                    "type": "transferCall",
                    "messages": [{"type": "request-start", "content": "{{ oops"}],
                    "destinations": [
                        {"type": "number", "number": "+1555", "message": "{% for %}"},
                        {"type": "number", "number": "+1666", "transferPlan": {"message": "{{"}},
                    ],
                },
                {"type": "function", "function": {"name": "f", "description": "{{ a | nope }}"}},
            ],
        },
    }
    fields = [p.split(":")[0] for p in check_templates(data)]
    assert fields == [
        "firstMessage",
        "model.messages[1].content",
        "model.tools[0].messages[0].content",
        "model.tools[0].destinations[0].message",
        "model.tools[0].destinations[1].transferPlan.message",
        "model.tools[1].function.description",
    ]


@pytest.mark.parametrize(
    ("config", "loc", "words"),
    [
        ({"firstMessage": "Hi {{ name"}, ("firstMessage",), "does not parse"),
        ({"endCallMessage": "{% if %}"}, ("endCallMessage",), "does not parse"),
        (
            {"model": {"messages": [{"role": "system", "content": "{{ x | bogus }}"}]}},
            ("model", "messages"),
            "messages[0].content: template uses unknown filter",
        ),
        (
            {"model": {"tools": [{"type": "function", "description": "{% for x %}"}]}},
            ("model", "tools"),
            "tools[0].description: template does not parse",
        ),
        ({"variableValues": "not an object"}, ("variableValues",), "dictionary"),
    ],
)
def test_an_assistant_with_a_bad_template_is_invalid(
    config: dict[str, Any], loc: tuple[str, ...], words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Assistant.model_validate(config)
    (error,) = caught.value.errors()
    assert error["loc"] == loc and words in error["msg"]


def test_personalize_renders_every_field_once() -> None:
    assistant = Assistant.model_validate(
        {
            "firstMessage": "Hi {{ name }}, it is {{ time }}.",
            "endCallMessage": "Bye {{ name }}",
            "voicemailMessage": "Call {{ company }} back",
            "model": {
                "messages": [
                    {"role": "system", "content": "Caller {{ customer.number }}; {{ x }}"}
                ],
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "lookup", "description": "Orders of {{ name }}"},
                    }
                ],
            },
            # a value holding template syntax is data: it is not rendered again
            "variableValues": {"name": "{{ Ada }}", "company": "Acme", "customer": {"tier": 2}},
        }
    )
    personal = personalize(assistant, now=NOW, customer=CUSTOMER)
    out = personal.assistant
    assert out.first_message == "Hi {{ Ada }}, it is 9:05 PM."
    assert out.end_call_message == "Bye {{ Ada }}" and out.voicemail_message == "Call Acme back"
    assert out.model.system_prompt == "Caller +15557654321; "
    assert out.model.tools[0]["function"]["description"] == "Orders of {{ Ada }}"
    assert personal.unknown == ("x",) and personal.templates == 5
    assert personal.variables["customer"] == {"number": "+15557654321", "tier": 2}
    assert personal.variables["company"] == "Acme" and personal.variables["year"] == "2026"


def test_personalize_refuses_output_past_the_fields_bound() -> None:
    assistant = Assistant.model_validate(
        {"firstMessage": "{{ long }}", "variableValues": {"long": "z" * 2000}}
    )
    with pytest.raises(ConfigError, match="firstMessage: after rendering its variables"):
        personalize(assistant, now=NOW)


def test_overrides_merge_deeply_and_lists_replace() -> None:
    base = {
        "name": "Base",
        "firstMessage": "Hello",
        "model": {"provider": "local", "temperature": 0.3, "tools": [{"type": "endCall"}]},
        "voice": {"provider": "piper", "speed": 1.0},
    }
    overrides = {
        "firstMessage": "Hi {{ name }}",
        "model": {"temperature": 0.9},
        "voice": {"speed": 1.2},
        "tools:append": [{"type": "transferCall"}],
        "variableValues": {"name": "Ada"},
    }
    merged = merge_overrides(base, overrides)
    assert merged["model"] == {
        "provider": "local",
        "temperature": 0.9,
        "tools": [{"type": "endCall"}, {"type": "transferCall"}],
    }
    assert merged["voice"] == {"provider": "piper", "speed": 1.2}
    assert merged["firstMessage"] == "Hi {{ name }}" and merged["variableValues"] == {"name": "Ada"}
    assert base["model"]["temperature"] == 0.3  # neither input changed
    assert merge_overrides({"model": {"messages": [1, 2]}}, {"model": {"messages": [3]}}) == {
        "model": {"messages": [3]}
    }
    effective = with_overrides(base, overrides)
    assert effective.model.temperature == 0.9 and effective.variable_values == {"name": "Ada"}
    with pytest.raises(ValidationError) as caught:
        with_overrides(base, {"voice": {"speed": 99}})
    assert caught.value.errors()[0]["loc"] == ("voice", "speed")
    with pytest.raises(ValueError, match="tools:append"):
        merge_overrides(base, {"tools:append": {"type": "endCall"}})


async def test_a_personal_greeting_is_said_but_not_kept_in_the_shared_cache() -> None:
    fixed = Assistant.model_validate({"firstMessage": "Hello, this is Ava."})
    templated = Assistant.model_validate(
        {"firstMessage": "Hello {{name}}!", "variableValues": {"name": "Ada"}}
    )
    now = dt.datetime(2026, 3, 7, 21, 5, tzinfo=dt.UTC)
    assert not personalize(fixed, now=now).assistant.personal_greeting
    personal = personalize(templated, now=now).assistant
    assert personal.personal_greeting and personal.first_message == "Hello Ada!"

    cache, tts = GreetingCache(), ToneTts(seconds_per_char=0.01)
    said = await cache.get_or_synthesize(tts, "Hello Ada!", keep=False)
    assert said.audio and cache.get(tts, "Hello Ada!") is None
    await cache.get_or_synthesize(tts, "Hello, this is Ava.")
    assert cache.get(tts, "Hello, this is Ava.") is not None


def test_idle_hook_messages_are_templates_too() -> None:
    hook = {
        "on": "customer.speech.timeout",
        "do": [{"type": "say", "exact": ["Still there, {{ name }}?", "Hello?"]}],
    }
    assistant = Assistant.model_validate({"hooks": [hook], "variableValues": {"name": "Ada"}})
    rendered = personalize(assistant, now=dt.datetime(2026, 3, 7, tzinfo=dt.UTC)).assistant
    assert rendered.hooks[0].do[0].exact == ["Still there, Ada?", "Hello?"]
    with pytest.raises(ValidationError, match=r"hooks\.0\.do\.0\.exact\n.*exact\[1\]: template"):
        Assistant.model_validate(
            {"hooks": [{**hook, "do": [{"type": "say", "exact": ["ok", "{{ oops"]}]}]}
        )

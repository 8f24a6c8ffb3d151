"""`hooks` on the assistant: the `customer.speech.timeout` idle hooks AVA runs, Vapi's shape and
defaults; what AVA does not run is refused by name rather than never fired."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from voice.assistant import Assistant


def _hooks(*hooks: dict[str, Any]) -> Assistant:
    return Assistant.model_validate({"hooks": list(hooks)})


def test_an_idle_hook_takes_vapis_defaults_and_round_trips() -> None:
    assistant = _hooks({"on": "customer.speech.timeout", "do": [{"type": "say", "exact": "Hi?"}]})
    hook = assistant.hooks[0]
    assert hook.options.timeout_seconds == 7.5
    assert hook.options.trigger_max_count == 3
    assert hook.options.trigger_reset_mode == "never"
    assert hook.do[0].exact == ["Hi?"]  # Vapi's single string is a list of one
    out = assistant.to_json()["hooks"][0]
    assert out["options"] == {
        "timeoutSeconds": 7.5,
        "triggerMaxCount": 3,
        "triggerResetMode": "never",
    }
    assert Assistant.model_validate(assistant.to_json()) == assistant


def test_say_then_end_call_is_accepted() -> None:
    hook = {
        "on": "customer.speech.timeout",
        "options": {"timeoutSeconds": 10, "triggerMaxCount": 1, "triggerResetMode": "onUserSpeech"},
        "do": [{"type": "say", "exact": ["Bye."]}, {"type": "tool", "tool": {"type": "endCall"}}],
    }
    assert [a.type for a in _hooks(hook).hooks[0].do] == ["say", "tool"]


@pytest.mark.parametrize(
    ("hook", "where", "says"),
    [
        ({"on": "call.timeElapsed", "do": [{"type": "say", "exact": "x"}]}, "hooks.0.on", "speech"),
        (
            {"on": "customer.speech.timeout", "do": [{"type": "say", "prompt": "Ask again"}]},
            "hooks.0.do.0",
            "prompt is not supported",
        ),
        (
            {"on": "customer.speech.timeout", "do": [{"type": "say"}]},
            "hooks.0.do.0",
            "needs exact",
        ),
        (
            {
                "on": "customer.speech.timeout",
                "do": [{"type": "tool", "tool": {"type": "transferCall"}}],
            },
            "hooks.0.do.0",
            "endCall",
        ),
        (
            {"on": "customer.speech.timeout", "do": [{"type": "message.add"}]},
            "hooks.0.do.0.type",
            "say",
        ),
        ({"on": "customer.speech.timeout", "do": []}, "hooks.0.do", "at least 1"),
        (
            {
                "on": "customer.speech.timeout",
                "options": {"timeoutSeconds": 0.2},
                "do": [{"type": "say", "exact": "x"}],
            },
            "hooks.0.options.timeoutSeconds",
            "greater than or equal to 1",
        ),
        (
            {
                "on": "customer.speech.timeout",
                "options": {"triggerResetMode": "always"},
                "do": [{"type": "say", "exact": "x"}],
            },
            "hooks.0.options.triggerResetMode",
            "onUserSpeech",
        ),
    ],
)
def test_what_ava_does_not_run_is_refused_naming_the_field(
    hook: dict[str, Any], where: str, says: str
) -> None:
    with pytest.raises(ValidationError) as info:
        _hooks(hook)
    errors = info.value.errors()
    assert [".".join(str(p) for p in e["loc"]) for e in errors] == [where]
    assert says in errors[0]["msg"]

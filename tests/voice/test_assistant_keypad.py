"""`keypadInputPlan` on the assistant: Vapi's shape and defaults, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from voice.assistant import Assistant


def _plan(plan: dict[str, Any]) -> Assistant:
    return Assistant.model_validate({"keypadInputPlan": plan})


def test_keypad_input_is_off_by_default_with_vapis_timeout() -> None:
    plan = Assistant.model_validate({}).keypad_input_plan
    assert plan.enabled is False
    assert plan.timeout_seconds == 2.0
    assert plan.delimiters == []


def test_a_vapi_plan_round_trips_in_camel_case() -> None:
    assistant = _plan({"enabled": True, "timeoutSeconds": 3.5, "delimiters": ["#", "*"]})
    assert assistant.to_json()["keypadInputPlan"] == {
        "enabled": True,
        "timeoutSeconds": 3.5,
        "delimiters": ["#", "*"],
    }
    assert Assistant.model_validate(assistant.to_json()) == assistant


def test_vapis_empty_delimiter_means_none() -> None:
    assert _plan({"enabled": True, "delimiters": [""]}).keypad_input_plan.delimiters == []


@pytest.mark.parametrize("timeout", [-0.1, 10.5, "soon"])
def test_a_timeout_out_of_vapis_range_is_refused(timeout: object) -> None:
    with pytest.raises(ValidationError, match="timeoutSeconds"):
        _plan({"enabled": True, "timeoutSeconds": timeout})


@pytest.mark.parametrize("delimiter", ["##", "x", "E", "1 ", 5])
def test_a_delimiter_that_is_not_one_keypad_key_is_refused(delimiter: object) -> None:
    with pytest.raises(ValidationError, match="delimiters"):
        _plan({"delimiters": [delimiter]})


def test_too_many_delimiters_are_refused() -> None:
    with pytest.raises(ValidationError, match="delimiters"):
        _plan({"delimiters": ["#", "*", "0", "1", "2"]})

"""The analysis plan (validated as a tenant's input) and the analysis' prompts and answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from voice.analysis import (
    RUBRIC_GUIDES,
    AnalysisFailed,
    CallAnalysis,
    CallFacts,
    parse_structured_data,
    parse_success_evaluation,
    parse_summary,
    structured_data_prompt,
    success_evaluation_prompt,
    summary_prompt,
)
from voice.analysis_plan import (
    MAX_PLAN_MESSAGES,
    MAX_SCHEMA_CHARS,
    RUBRICS,
    AnalysisPlan,
    check_schema,
)
from voice.assistant import Assistant

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are Ava, a dental receptionist. Book cleanings."},
    {"role": "assistant", "content": "Hello, this is Ava."},
    {"role": "user", "content": "I'd like a cleaning on Tuesday."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
    {"role": "tool", "tool_call_id": "c1", "content": "booked"},
    {"role": "assistant", "content": "You're booked for Tuesday at 2."},
]
SCHEMA = {
    "type": "object",
    "properties": {"day": {"type": "string"}, "booked": {"type": "boolean"}},
    "required": ["day", "booked"],
}


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for _ in range(levels - 1):
        schema = {"items": schema}
    return schema


def facts() -> CallFacts:
    return CallFacts.from_history(HISTORY, "customer-ended-call")


def problems(assistant: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Assistant.model_validate(assistant)
    return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in caught.value.errors()]


# --- the plan ---------------------------------------------------------------------------------


def test_vapis_defaults() -> None:
    plan = Assistant().analysis_plan
    assert plan.min_messages_threshold == 2
    assert plan.summary_plan.enabled and plan.summary_plan.timeout_seconds == 5
    assert not plan.structured_data_plan.enabled
    assert plan.success_evaluation_plan.enabled
    assert plan.success_evaluation_plan.rubric == "PassFail"
    # A Vapi assistant's plan round-trips (unknown fields kept).
    given = {"summaryPlan": {"enabled": False}, "structuredDataMultiPlan": []}
    assistant = Assistant.model_validate({"analysisPlan": given})
    out = assistant.to_json()["analysisPlan"]
    assert out["summaryPlan"]["enabled"] is False and out["structuredDataMultiPlan"] == []


def test_a_summary_prompt_without_the_transcript_is_refused() -> None:
    plan = {"summaryPlan": {"messages": [{"role": "system", "content": "Summarize the call."}]}}
    (problem,) = problems({"analysisPlan": plan})
    assert problem.startswith("analysisPlan.summaryPlan: ")
    assert "{{transcript}}" in problem
    # With it (any spacing), accepted.
    plan["summaryPlan"]["messages"].append({"role": "user", "content": "{{ transcript }}"})
    Assistant.model_validate({"analysisPlan": plan})


@pytest.mark.parametrize(
    ("part", "content", "expected"),
    [
        ("summaryPlan", "{{transcript}} {{schema}}", "{{schema}} is not available here"),
        ("successEvaluationPlan", "{{transcript}} {{customer.name}}", "Liquid markup"),
        ("successEvaluationPlan", "{{transcript}} {% if x %}y{% endif %}", "Liquid markup"),
        ("summaryPlan", "{{transcript}}" * 9, "at most 8 variables"),
    ],
)
def test_templates_take_only_vapis_variables(part: str, content: str, expected: str) -> None:
    plan = {part: {"messages": [{"role": "user", "content": content}]}}
    (problem,) = problems({"analysisPlan": plan})
    assert expected in problem


def test_an_unknown_rubric_and_bad_timeouts_are_refused() -> None:
    (problem,) = problems({"analysisPlan": {"successEvaluationPlan": {"rubric": "Vibes"}}})
    assert problem.startswith("analysisPlan.successEvaluationPlan.rubric: Input should be")
    for seconds in (0.5, 61):
        (problem,) = problems({"analysisPlan": {"summaryPlan": {"timeoutSeconds": seconds}}})
        assert problem.startswith("analysisPlan.summaryPlan.timeoutSeconds")
    too_many = [{"role": "user", "content": "{{transcript}}"}] * (MAX_PLAN_MESSAGES + 1)
    (problem,) = problems({"analysisPlan": {"summaryPlan": {"messages": too_many}}})
    assert "messages" in problem


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "objet"}, "schema.type: 'objet' is not valid"),
        ({"type": "object", "required": "day"}, "schema.required: 'day' is not of type"),
        ({"properties": {"a": {"pattern": "(a+)+$"}}}, "properties.a.pattern: regular exp"),
        ({"patternProperties": {"^x": {}}}, "schema.patternProperties: regular expressions"),
        ({"$ref": "https://example.com/s.json"}, "only references within the schema"),
        ({"$schema": "https://example.com/mine"}, "is not a known draft"),
        (nested(17), "nested deeper than 16 levels"),
        ({"enum": ["x" * 5000]}, "string longer than 4096"),
        ({"enum": ["x" * 4000] * 5}, f"over {MAX_SCHEMA_CHARS} characters"),
        ([], "schema must be an object"),
    ],
)
def test_an_invalid_schema_is_refused(schema: Any, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_schema(schema)
    assert expected in str(caught.value)


def test_a_property_named_pattern_is_not_a_regular_expression() -> None:
    schema = {"type": "object", "properties": {"pattern": {"type": "string"}}}
    check_schema(schema)
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}
    check_schema(draft7)


def test_enabled_structured_data_needs_a_schema_and_422s_name_it() -> None:
    (problem,) = problems({"analysisPlan": {"structuredDataPlan": {"enabled": True}}})
    assert "schema is required" in problem
    plan = {"structuredDataPlan": {"enabled": True, "schema": {"type": "objet"}}}
    (problem,) = problems({"analysisPlan": plan})
    assert problem.startswith("analysisPlan.structuredDataPlan.schema: Value error, schema.type")


# --- prompts --------------------------------------------------------------------------------


def test_the_facts_of_a_call() -> None:
    call = facts()
    assert call.transcript == (
        "AI: Hello, this is Ava.\nUser: I'd like a cleaning on Tuesday.\n"
        "AI: You're booked for Tuesday at 2."
    )
    assert call.system_prompt == HISTORY[0]["content"]
    assert call.conversation == 3  # tool calls and results are not conversation
    assert json.loads(call.messages) == HISTORY
    long = [{"role": "user", "content": "x" * 200_000}]
    assert len(CallFacts.from_history(long, "x").transcript) == 100_001


def test_vapis_default_prompts() -> None:
    call = facts()
    plan = AnalysisPlan.model_validate(
        {
            "structuredDataPlan": {"enabled": True, "schema": SCHEMA},
            "successEvaluationPlan": {"rubric": "NumericScale"},
        }
    )
    system, user = summary_prompt(plan.summary_plan, call)
    assert system.role == "system" and "Summarize the call in 2-3 sentences" in system.content
    assert call.transcript in user.content and "customer-ended-call" in user.content
    system, user = structured_data_prompt(plan.structured_data_plan, call)
    assert json.dumps(SCHEMA) in system.content and call.transcript in user.content
    system, transcript, prompt = success_evaluation_prompt(plan.success_evaluation_plan, call)
    assert RUBRIC_GUIDES["NumericScale"] in system.content
    assert call.transcript in transcript.content
    assert call.system_prompt in prompt.content and "customer-ended-call" in prompt.content


def test_a_custom_prompt_is_rendered_with_the_variables_only() -> None:
    content = "Reason: {{ endedReason }}. Call: {{transcript}}. Keep {{ this }}? no: {x}"
    plan = AnalysisPlan.model_validate(
        {
            "summaryPlan": {
                "messages": [{"role": "user", "content": content.replace("{{ this }}", "")}]
            }
        }
    )
    (message,) = summary_prompt(plan.summary_plan, facts())
    assert message.content.startswith("Reason: customer-ended-call. Call: AI: Hello")
    assert message.content.endswith("? no: {x}")


# --- answers --------------------------------------------------------------------------------


def test_a_summary_answer() -> None:
    assert parse_summary("  The caller booked a cleaning.\n") == "The caller booked a cleaning."
    for bad in ("", "   ", "x" * 16_001):
        with pytest.raises(AnalysisFailed) as caught:
            parse_summary(bad)
        assert caught.value.kind == "invalid-answer"


def test_structured_data_is_json_valid_against_the_schema() -> None:
    assert parse_structured_data('{"day": "Tuesday", "booked": true}', SCHEMA) == {
        "day": "Tuesday",
        "booked": True,
    }
    fenced = '```json\n{"day": "Tuesday", "booked": false}\n```'
    assert parse_structured_data(fenced, SCHEMA)["booked"] is False
    cases = {
        "Tuesday, booked": ("invalid-answer", "is not JSON"),
        '{"day": "Tuesday", "booked": "yes"}': (
            "schema-mismatch", "structuredData.booked breaks the schema's 'type' rule"
        ),
        '{"day": "Tuesday"}': ("schema-mismatch", "structuredData breaks the schema's 'required'"),
    }  # fmt: skip
    for answer, (kind, detail) in cases.items():
        with pytest.raises(AnalysisFailed) as caught:
            parse_structured_data(answer, SCHEMA)
        assert caught.value.kind == kind and detail in caught.value.detail
        assert "yes" not in caught.value.detail  # the model's value is not echoed
    missing_ref = {"$ref": "#/$defs/nothing"}
    with pytest.raises(AnalysisFailed, match="schema could not be applied"):
        parse_structured_data("{}", missing_ref)


@pytest.mark.parametrize(
    ("rubric", "answer", "expected"),
    [
        ("PassFail", "true", "true"),
        ("PassFail", "False.", "false"),
        ("PassFail", "'pass'", "true"),
        ("NumericScale", "8", "8"),
        ("NumericScale", "7/10", "7"),
        ("NumericScale", "10.0", "10"),
        ("PercentageScale", "85%", "85"),
        ("PercentageScale", "0", "0"),
        ("DescriptiveScale", "good", "Good"),
        ("LikertScale", "strongly agree.", "Strongly Agree"),
        ("Checklist", '{"Greeted": true, "Booked": false}', '{"Greeted":true,"Booked":false}'),
        ("Matrix", '```json\n{"Tone": "Excellent"}\n```', '{"Tone":"Excellent"}'),
        ("AutomaticRubric", '{"Resolved": 8, "Polite": 10}', '{"Resolved":8,"Polite":10}'),
    ],
)
def test_each_rubrics_answer(rubric: str, answer: str, expected: str) -> None:
    assert parse_success_evaluation(answer, rubric) == expected


@pytest.mark.parametrize(
    ("rubric", "answer"),
    [
        ("PassFail", "It went well"),
        ("NumericScale", "0"),
        ("NumericScale", "11"),
        ("NumericScale", "7.5"),
        ("NumericScale", "eight"),
        ("PercentageScale", "101%"),
        ("DescriptiveScale", "Superb"),
        ("LikertScale", "Somewhat agree"),
        ("Checklist", '{"Greeted": "yes"}'),
        ("Checklist", "{}"),
        ("Checklist", "[true]"),
        ("Matrix", '{"Tone": "Great"}'),
        ("AutomaticRubric", '{"Resolved": 8.5}'),
        ("AutomaticRubric", '{"Resolved": true}'),
        ("AutomaticRubric", json.dumps({f"c{i}": 5 for i in range(21)})),
    ],
)
def test_an_answer_in_the_wrong_shape_fails(rubric: str, answer: str) -> None:
    with pytest.raises(AnalysisFailed) as caught:
        parse_success_evaluation(answer, rubric)
    assert caught.value.kind == "invalid-answer"
    assert rubric in caught.value.detail


def test_every_rubric_has_a_guide() -> None:
    assert set(RUBRIC_GUIDES) == set(RUBRICS)


def test_the_analysis_as_vapi_shows_it() -> None:
    analysis = CallAnalysis(summary="Booked.", success_evaluation="true")
    analysis.failed("structuredData", AnalysisFailed("timeout", "no answer within 1 s"))
    assert analysis.to_json() == {
        "summary": "Booked.",
        "successEvaluation": "true",
        "errors": {"structuredData": {"kind": "timeout", "detail": "no answer within 1 s"}},
    }
    assert CallAnalysis(structured_data={"a": 1}).to_json() == {"structuredData": {"a": 1}}

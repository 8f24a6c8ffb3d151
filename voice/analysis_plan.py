"""Vapi's `analysisPlan`: what is worked out from a call once it has ended, validated.

Three parts, each with its own prompt messages and its own `timeoutSeconds` (1–60, default 5):
`summaryPlan` (on by default), `structuredDataPlan` (off by default; its `schema` is a JSON
Schema) and `successEvaluationPlan` (on by default, `rubric` PassFail). A call with fewer than
`minMessagesThreshold` messages (default 2: the caller's and the assistant's, system and tool
messages not counted) is not analysed.

The prompts are Vapi's templates: `{{transcript}}`, `{{systemPrompt}}`, `{{messages}}`,
`{{endedReason}}`, and `{{schema}}` / `{{rubric}}` in their parts. Only those names are taken
(no other Liquid), and every custom prompt must include `{{transcript}}`: without it the model
is asked about a call it never sees, and Vapi's users have received confident summaries of
calls that did not happen. Everything here comes from a tenant, so it is bounded: messages per
part and characters per message, the schema's size and nesting. A schema must be a valid JSON
Schema (checked with `jsonschema`), its `$ref`s local, and without `pattern` /
`patternProperties`: a tenant's regular expression would run on the server, where a
catastrophic one stalls every call (Python's `re` has no time limit).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from voice.json_bounds import JsonBounds, JsonTooComplex, check_json

__all__ = [
    "MAX_PLAN_MESSAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SCHEMA_CHARS",
    "MAX_SCHEMA_DEPTH",
    "RUBRICS",
    "TEMPLATE_VARIABLES",
    "AnalysisPlan",
    "PromptMessage",
    "Rubric",
    "StructuredDataPlan",
    "SuccessEvaluationPlan",
    "SummaryPlan",
    "check_schema",
    "schema_validator",
    "template_names",
]

Rubric = Literal[
    "NumericScale",
    "DescriptiveScale",
    "Checklist",
    "Matrix",
    "PercentageScale",
    "LikertScale",
    "AutomaticRubric",
    "PassFail",
]
RUBRICS: tuple[str, ...] = get_args(Rubric)

# AVA's bounds (Vapi states none).
MAX_PLAN_MESSAGES = 8  # prompt messages of one part
MAX_PROMPT_CHARS = 20_000  # one prompt message's content
MAX_VARIABLE_USES = 8  # template variables in one message: each may be a whole transcript
MAX_SCHEMA_CHARS = 16 * 1024  # the schema as JSON
MAX_SCHEMA_DEPTH = 16  # nesting of the schema's JSON; a data record rarely passes 6
TIMEOUT_RANGE = (1.0, 60.0)  # Vapi's, per part (default 5)

TEMPLATE_VARIABLES = frozenset({"transcript", "systemPrompt", "messages", "endedReason"})
_PART_VARIABLES: dict[str, frozenset[str]] = {
    "summary": frozenset(),
    "structuredData": frozenset({"schema"}),
    "successEvaluation": frozenset({"rubric"}),
}
_MARKUP = re.compile(r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}|\{%|\{\{")
_SCHEMA_BOUNDS = JsonBounds(max_depth=MAX_SCHEMA_DEPTH, max_string_chars=4096)
# Keywords whose value is a subschema / a list of them / an object of them (JSON Schema 2020-12
# and draft 7), for walking a schema without mistaking a property named "pattern" for one.
_ONE = (
    "additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames",
    "unevaluatedItems", "unevaluatedProperties", "additionalItems",
)  # fmt: skip
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_NAMED = ("properties", "$defs", "definitions", "dependentSchemas")
_REFUSED = ("pattern", "patternProperties")


class _Plan(BaseModel):
    # Vapi's camelCase; fields AVA does not act on (structuredDataMultiPlan, outcomeIds) are
    # kept, as everywhere in the assistant.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", validate_assignment=True
    )


class PromptMessage(_Plan):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


def template_names(text: str) -> Iterator[str | None]:
    """The variable of each `{{ name }}` in `text`; None for any other Liquid markup."""
    for match in _MARKUP.finditer(text):
        yield match.group(1)


def _check_messages(messages: list[PromptMessage] | None, part: str) -> None:
    if messages is None:
        return
    allowed = TEMPLATE_VARIABLES | _PART_VARIABLES[part]
    transcript = False
    for i, message in enumerate(messages):
        names = list(template_names(message.content))
        if len(names) > MAX_VARIABLE_USES:
            raise ValueError(f"messages[{i}].content: at most {MAX_VARIABLE_USES} variables")
        for name in names:
            if name not in allowed:
                shown = ", ".join("{{" + v + "}}" for v in sorted(allowed))
                what = "{{" + name + "}}" if name else "Liquid markup"
                raise ValueError(f"messages[{i}].content: {what} is not available here ({shown})")
        transcript = transcript or "transcript" in names
    if not transcript:
        raise ValueError(
            "the messages never include {{transcript}}: the model would be asked about a call "
            "it cannot see (and answer anyway)"
        )


class _Part(_Plan):
    # None: Vapi's default prompts (voice.analysis).
    messages: list[PromptMessage] | None = Field(
        default=None, min_length=1, max_length=MAX_PLAN_MESSAGES
    )
    timeout_seconds: float = Field(default=5.0, ge=TIMEOUT_RANGE[0], le=TIMEOUT_RANGE[1])


class SummaryPlan(_Part):
    enabled: bool = True

    @model_validator(mode="after")
    def _templates(self) -> SummaryPlan:
        _check_messages(self.messages, "summary")
        return self


class StructuredDataPlan(_Part):
    enabled: bool = False
    # `schema` shadows a BaseModel attribute, hence the name.
    data_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    @field_validator("data_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            check_schema(schema)
        return schema

    @model_validator(mode="after")
    def _templates(self) -> StructuredDataPlan:
        if self.enabled and self.data_schema is None:
            raise ValueError("schema is required when structured data is enabled")
        _check_messages(self.messages, "structuredData")
        return self


class SuccessEvaluationPlan(_Part):
    enabled: bool = True
    rubric: Rubric = "PassFail"

    @model_validator(mode="after")
    def _templates(self) -> SuccessEvaluationPlan:
        _check_messages(self.messages, "successEvaluation")
        return self


class AnalysisPlan(_Plan):
    min_messages_threshold: int = Field(default=2, ge=0, le=1000)
    summary_plan: SummaryPlan = Field(default_factory=SummaryPlan)
    structured_data_plan: StructuredDataPlan = Field(default_factory=StructuredDataPlan)
    success_evaluation_plan: SuccessEvaluationPlan = Field(default_factory=SuccessEvaluationPlan)

    @property
    def any_enabled(self) -> bool:
        return (
            self.summary_plan.enabled
            or self.structured_data_plan.enabled
            or self.success_evaluation_plan.enabled
        )


def _subschemas(schema: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key in _ONE:
        if key in schema:
            yield key, schema[key]
    for key in _MANY:
        value = schema.get(key)
        if isinstance(value, list):
            yield from ((f"{key}[{i}]", s) for i, s in enumerate(value))
    if isinstance(schema.get("items"), list):  # draft 7's tuple form
        yield from ((f"items[{i}]", s) for i, s in enumerate(schema["items"]))
    for key in _NAMED:
        value = schema.get(key)
        if isinstance(value, Mapping):
            yield from ((f"{key}.{name}", s) for name, s in value.items())


def schema_validator(schema: Mapping[str, Any]) -> type[Validator]:
    """The validator class for `schema`'s draft (`$schema`; 2020-12 when it names none).
    Raises ValueError for a `$schema` that is not a JSON Schema draft."""
    if "$schema" not in schema:
        return Draft202012Validator
    found: type[Validator] | None = validator_for(schema, default=None)  # type: ignore[arg-type]
    if found is None:
        raise ValueError(f"schema.$schema: {str(schema['$schema'])[:100]!r} is not a known draft")
    return found


def check_schema(schema: Any) -> None:
    """Raise ValueError (naming the place) unless `schema` is a JSON Schema AVA will use:
    bounded in size and nesting, valid for its draft (2020-12 unless `$schema` says
    otherwise), `$ref`s only within itself, no regular expressions."""
    if not isinstance(schema, Mapping):
        raise ValueError("schema must be an object")
    try:
        check_json(schema, _SCHEMA_BOUNDS, at=("schema",))
    except JsonTooComplex as exc:
        raise ValueError(str(exc)) from exc
    if len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False)) > MAX_SCHEMA_CHARS:
        raise ValueError(f"schema is over {MAX_SCHEMA_CHARS} characters as JSON")
    stack: list[tuple[str, Any]] = [("schema", schema)]
    while stack:
        where, node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        for key in _REFUSED:
            if key in node:
                raise ValueError(f"{where}.{key}: regular expressions are not supported")
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise ValueError(f"{where}.$ref: only references within the schema (#…) are allowed")
        stack.extend((f"{where}.{key}", sub) for key, sub in _subschemas(node))
    try:
        schema_validator(schema).check_schema(dict(schema))
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"schema{'.' + where if where else ''}: {exc.message}") from exc

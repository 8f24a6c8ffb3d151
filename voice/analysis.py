"""The analysis of an ended call, sans I/O: prompts in, answers parsed and checked.

`CallFacts.from_history` takes what the call left (its messages in OpenAI's format, its ended
reason); `summary_prompt`, `structured_data_prompt` and `success_evaluation_prompt` render a
part's messages (the plan's, else Vapi's defaults) with Vapi's template variables; the model's
answer goes through `parse_summary`, `parse_structured_data` (JSON, valid against the plan's
schema) or `parse_success_evaluation` (the rubric's shape, normalized). A bad answer raises
`AnalysisFailed` with a fixed kind and AVA's own words: what the model said is never echoed
into an error. `CallAnalysis` is the result as Vapi's `call.analysis`, plus AVA's `errors`.

`successEvaluation` is a string, as on Vapi: PassFail "true"/"false"; NumericScale "1"–"10";
PercentageScale "0"–"100"; DescriptiveScale Excellent/Good/Fair/Poor; LikertScale Strongly
Agree…Strongly Disagree; Checklist, Matrix and AutomaticRubric a compact JSON object of
criterion → met (bool), level (a DescriptiveScale word) or score (1–10) respectively.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema.exceptions import ValidationError, best_match

from voice.analysis_plan import (
    PromptMessage,
    StructuredDataPlan,
    SuccessEvaluationPlan,
    SummaryPlan,
    schema_validator,
)
from voice.types import ChatMessage

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_TRANSCRIPT_CHARS",
    "PARTS",
    "RUBRIC_GUIDES",
    "AnalysisFailed",
    "CallAnalysis",
    "CallFacts",
    "Part",
    "parse_structured_data",
    "parse_success_evaluation",
    "parse_summary",
    "render",
    "structured_data_prompt",
    "success_evaluation_prompt",
    "summary_prompt",
]

Part = Literal["summary", "structuredData", "successEvaluation"]
PARTS: tuple[Part, ...] = ("summary", "structuredData", "successEvaluation")
MAX_TRANSCRIPT_CHARS = 100_000  # a long call's transcript is cut here (its start is kept)
MAX_ANSWER_CHARS = 16_000  # a model's answer past this is refused, not stored
MAX_CRITERIA = 20  # Checklist, Matrix and AutomaticRubric entries
_SPEAKERS = {"assistant": "AI", "user": "User"}

# Vapi's default prompts (its API reference, `@default` of each plan's `messages`).
SUMMARY_MESSAGES = (
    PromptMessage(
        role="system",
        content="You are an expert note-taker. You will be given a transcript of a call. "
        "Summarize the call in 2-3 sentences. DO NOT return anything except the summary.",
    ),
    PromptMessage(
        role="user",
        content="Here is the transcript:\n\n{{transcript}}\n\n. "
        "Here is the ended reason of the call:\n\n{{endedReason}}\n\n",
    ),
)
STRUCTURED_DATA_MESSAGES = (
    PromptMessage(
        role="system",
        content="You are an expert data extractor. You will be given a transcript of a call. "
        "Extract structured data per the JSON Schema. DO NOT return anything except the "
        "structured data.\n\nJson Schema:\n{{schema}}\n\nOnly respond with the JSON.",
    ),
    PromptMessage(
        role="user",
        content="Here is the transcript:\n\n{{transcript}}\n\n. "
        "Here is the ended reason of the call:\n\n{{endedReason}}\n\n",
    ),
)
SUCCESS_EVALUATION_MESSAGES = (
    PromptMessage(
        role="system",
        content="You are an expert call evaluator. You will be given a transcript of a call "
        "and the system prompt of the AI participant. Determine if the call was successful "
        "based on the objectives inferred from the system prompt. DO NOT return anything "
        "except the result.\n\nRubric:\n{{rubric}}\n\nOnly respond with the result.",
    ),
    PromptMessage(role="user", content="Here is the transcript:\n\n{{transcript}}\n\n"),
    PromptMessage(
        role="user",
        content="Here was the system prompt of the call:\n\n{{systemPrompt}}\n\n. "
        "Here is the ended reason of the call:\n\n{{endedReason}}\n\n",
    ),
)

DESCRIPTIVE = ("Excellent", "Good", "Fair", "Poor")
LIKERT = ("Strongly Agree", "Agree", "Neutral", "Disagree", "Strongly Disagree")
# What {{rubric}} says for each rubric: the scale, and the exact shape of the answer.
RUBRIC_GUIDES: dict[str, str] = {
    "PassFail": "PassFail: answer 'true' if the call met its objectives, 'false' if not.",
    "NumericScale": "NumericScale: a whole number from 1 (worst) to 10 (best). Answer the number.",
    "PercentageScale": "PercentageScale: a whole number from 0 to 100, the percentage of the "
    "call's objectives met. Answer the number.",
    "DescriptiveScale": "DescriptiveScale: one of Excellent, Good, Fair, Poor. Answer the word.",
    "LikertScale": "LikertScale: how much you agree that the call was successful: one of "
    "Strongly Agree, Agree, Neutral, Disagree, Strongly Disagree. Answer the phrase.",
    "Checklist": "Checklist: the call's criteria, each met or not. Answer a JSON object whose "
    'keys are the criteria and values true or false, e.g. {"Greeted the caller": true}.',
    "Matrix": "Matrix: the call's criteria, each at a performance level. Answer a JSON object "
    'whose keys are the criteria and values one of "Excellent", "Good", "Fair", "Poor".',
    "AutomaticRubric": "AutomaticRubric: break the evaluation down into the criteria that "
    "matter for this call, each scored 1 to 10. Answer a JSON object whose keys are the "
    'criteria and values the scores, e.g. {"Resolved the request": 8}.',
}


class AnalysisFailed(Exception):
    """A part of the analysis did not produce a result: `kind` is fixed (timeout, cancelled,
    model-error, no-model, invalid-answer, schema-mismatch), `detail` AVA's own words."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the prompts may say about a call (Vapi's template variables)."""

    transcript: str
    system_prompt: str
    messages: str  # the call's messages, OpenAI's format, as JSON
    ended_reason: str
    conversation: int  # the caller's and the assistant's messages with words in them

    @classmethod
    def from_history(cls, history: Sequence[Mapping[str, Any]], ended_reason: str) -> CallFacts:
        """From the call's messages in OpenAI's format (system prompt first, as the session
        ends with them); the transcript is Vapi's `artifact.transcript` ("AI: …\\nUser: …")."""
        lines = [
            f"{_SPEAKERS[m['role']]}: {m['content']}"
            for m in history
            if m.get("role") in _SPEAKERS and isinstance(m.get("content"), str) and m["content"]
        ]
        transcript = "\n".join(lines)
        if len(transcript) > MAX_TRANSCRIPT_CHARS:
            transcript = transcript[:MAX_TRANSCRIPT_CHARS] + "…"
        system = "\n".join(
            str(m.get("content") or "") for m in history if m.get("role") == "system"
        )
        text = json.dumps(list(history), ensure_ascii=False, default=str)
        if len(text) > MAX_TRANSCRIPT_CHARS:
            text = text[:MAX_TRANSCRIPT_CHARS] + "…"
        return cls(transcript, system[:MAX_TRANSCRIPT_CHARS], text, ended_reason, len(lines))


def render(messages: Iterable[PromptMessage], variables: Mapping[str, str]) -> list[ChatMessage]:
    """Each message with its `{{ name }}`s replaced (validated plans hold no other markup)."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        return variables.get(name, "") if name else match.group(0)

    pattern = re.compile(r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}")
    return [ChatMessage(role=m.role, content=pattern.sub(fill, m.content)) for m in messages]


def _variables(facts: CallFacts, **extra: str) -> dict[str, str]:
    return {
        "transcript": facts.transcript,
        "systemPrompt": facts.system_prompt,
        "messages": facts.messages,
        "endedReason": facts.ended_reason,
        **extra,
    }


def summary_prompt(plan: SummaryPlan, facts: CallFacts) -> list[ChatMessage]:
    return render(plan.messages or SUMMARY_MESSAGES, _variables(facts))


def structured_data_prompt(plan: StructuredDataPlan, facts: CallFacts) -> list[ChatMessage]:
    schema = json.dumps(plan.data_schema or {}, ensure_ascii=False)
    return render(plan.messages or STRUCTURED_DATA_MESSAGES, _variables(facts, schema=schema))


def success_evaluation_prompt(plan: SuccessEvaluationPlan, facts: CallFacts) -> list[ChatMessage]:
    rubric = RUBRIC_GUIDES[plan.rubric]
    return render(plan.messages or SUCCESS_EVALUATION_MESSAGES, _variables(facts, rubric=rubric))


# --- the answers ----------------------------------------------------------------------------


def _answer(text: str) -> str:
    text = text.strip()
    if not text:
        raise AnalysisFailed("invalid-answer", "the model answered nothing")
    if len(text) > MAX_ANSWER_CHARS:
        raise AnalysisFailed("invalid-answer", f"the answer is over {MAX_ANSWER_CHARS} characters")
    return text


def parse_summary(text: str) -> str:
    return _answer(text)


_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def _json(text: str, what: str) -> Any:
    """JSON from a model's answer, which may come in a Markdown code fence."""
    text = _answer(text)
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        raise AnalysisFailed("invalid-answer", f"{what} is not JSON") from None


def parse_structured_data(text: str, schema: Mapping[str, Any]) -> Any:
    """The answer as JSON, valid against `schema` (a schema `check_schema` accepted)."""
    data = _json(text, "the structured data")
    validator = schema_validator(schema)(dict(schema))
    try:
        error = best_match(validator.iter_errors(data))
    except Exception:  # referencing's errors: a `$ref` to a part of the schema that is missing
        raise AnalysisFailed("schema-mismatch", "the schema could not be applied") from None
    if error is not None:
        raise AnalysisFailed("schema-mismatch", _mismatch(error))
    return data


def _mismatch(error: ValidationError) -> str:
    # The place and the rule broken: not the message, which quotes the model's value.
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"structuredData{where} breaks the schema's {error.validator!r} rule"


def parse_success_evaluation(text: str, rubric: str) -> str:
    """The answer in the rubric's shape (see the module docstring), normalized."""
    answer = _answer(text)
    word = answer.strip().strip("`'\".").strip()
    lowered = word.lower()
    if rubric == "PassFail":
        if lowered in ("true", "pass", "passed", "yes"):
            return "true"
        if lowered in ("false", "fail", "failed", "no"):
            return "false"
        raise AnalysisFailed("invalid-answer", "PassFail wants true or false")
    if rubric in ("NumericScale", "PercentageScale"):
        low, high = (1, 10) if rubric == "NumericScale" else (0, 100)
        match = re.fullmatch(r"(\d{1,3}(?:\.0+)?)\s*(?:%|/\s*10|/\s*100)?", word)
        value = float(match.group(1)) if match else math.nan
        if not low <= value <= high:
            raise AnalysisFailed("invalid-answer", f"{rubric} wants a whole number {low}–{high}")
        return str(int(value))
    if rubric in ("DescriptiveScale", "LikertScale"):
        scale = DESCRIPTIVE if rubric == "DescriptiveScale" else LIKERT
        for option in scale:
            if lowered == option.lower():
                return option
        raise AnalysisFailed("invalid-answer", f"{rubric} wants one of {', '.join(scale)}")
    if rubric in ("Checklist", "Matrix", "AutomaticRubric"):
        return json.dumps(_criteria(answer, rubric), ensure_ascii=False, separators=(",", ":"))
    raise AnalysisFailed("invalid-answer", f"unknown rubric {rubric!r}")


def _criteria(answer: str, rubric: str) -> dict[str, Any]:
    data = _json(answer, rubric)
    if not isinstance(data, dict) or not 1 <= len(data) <= MAX_CRITERIA:
        raise AnalysisFailed(
            "invalid-answer", f"{rubric} wants a JSON object of 1–{MAX_CRITERIA} criteria"
        )
    for name, value in data.items():
        if len(name) > 200:
            raise AnalysisFailed("invalid-answer", f"{rubric}: a criterion over 200 characters")
        if rubric == "Checklist":
            ok = isinstance(value, bool)
        elif rubric == "Matrix":
            ok = value in DESCRIPTIVE
        else:
            ok = type(value) is int and 1 <= value <= 10
        if not ok:
            wanted = {"Checklist": "true or false", "Matrix": "Excellent, Good, Fair or Poor"}
            raise AnalysisFailed(
                "invalid-answer", f"{rubric}: each criterion wants {wanted.get(rubric, '1–10')}"
            )
    return data


@dataclass(slots=True)
class CallAnalysis:
    """Vapi's `call.analysis` (a part that did not run or failed is absent) and, AVA's
    extension, `errors`: part → {kind, detail} for each part that failed."""

    summary: str | None = None
    structured_data: Any = None
    success_evaluation: str | None = None
    errors: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.summary is not None:
            out["summary"] = self.summary
        if self.structured_data is not None:
            out["structuredData"] = self.structured_data
        if self.success_evaluation is not None:
            out["successEvaluation"] = self.success_evaluation
        if self.errors:
            out["errors"] = dict(self.errors)
        return out

    def failed(self, part: Part, error: AnalysisFailed) -> None:
        self.errors[part] = error.to_json()

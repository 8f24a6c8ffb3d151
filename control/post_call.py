"""The post-call analysis (Vapi's `analysisPlan`), run once a call has ended.

`PostCallAnalyzer` is an `EventSink` on the app's FanOut, placed after the recorder and before
the webhook sender. On `CallEnded` it looks up the ended call's assistant (the live session's,
templates rendered) and, if the plan has an enabled part, the assistant's model is not the
offline responder, and the call has at least `minMessagesThreshold` messages, starts a job in
its own TaskGroup. The call itself never waits: the session has finished when `CallEnded` is
emitted, and `emit` only starts the job.

A job asks the assistant's own model (`model.provider`/`model`, the call's tenant's credentials
as for the call itself: `control.providers`; no tools, temperature 0) the enabled parts
concurrently, each bounded by its own `timeoutSeconds`; the answers are checked by
`voice.analysis`. A part that fails — timeout, the model's error, an answer in the wrong shape,
data that breaks the schema, the server shutting down — is recorded in `analysis.errors` with a
fixed kind (and counted in `ava_call_analysis_parts{part, outcome}`), never waited on past its
timeout. Then the call's `end-of-call-report`, held by the webhook sender (`hold`), is released
with `summary` and `analysis`; then the result is written to `calls.analysis` (after the
recorder has written the call's own events, so the row is there).

At shutdown (`running_analysis`) the jobs of the last calls get `grace_seconds`; the rest are
cancelled, their unfinished parts recorded as "cancelled", and their reports released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from sqlalchemy.exc import SQLAlchemyError

from control.call_jobs import CallJobs, running_jobs
from control.egress import egress_policy
from control.providers import CloudAdapters, HttpPool, provider_keys
from control.settings import Settings
from storage.errors import StorageError
from voice.analysis import (
    MAX_ANSWER_CHARS,
    AnalysisFailed,
    CallAnalysis,
    CallFacts,
    Part,
    parse_structured_data,
    parse_success_evaluation,
    parse_summary,
    structured_data_prompt,
    success_evaluation_prompt,
    summary_prompt,
)
from voice.analysis_plan import AnalysisPlan
from voice.assistant import Assistant, ModelConfig
from voice.egress_http import guarded_client
from voice.errors import ConfigError, ProviderError
from voice.events import CallEnded, CallEvent
from voice.ports import LanguageModel
from voice.providers import StageTimeouts
from voice.types import ChatMessage

__all__ = [
    "CloudModels",
    "Complete",
    "LiveCall",
    "ModelSource",
    "PostCallAnalyzer",
    "ReportRelease",
    "analyse",
    "post_call_analyzer",
    "running_analysis",
]

if TYPE_CHECKING:
    from control.metrics import Metrics
    from control.stores import Stores
    from storage import CallRecorder

log = logging.getLogger("ava.analysis")

Complete = Callable[[Sequence[ChatMessage]], Awaitable[str]]
ReportRelease = Callable[[Mapping[str, Any]], None]
Closer = Callable[[], Awaitable[None]]
Save = Callable[[str, dict[str, Any]], Awaitable[object]]
Outcome = Callable[[str, str], None]  # (part, "ok" or the failure kind)

ANALYSIS_MAX_TOKENS = 1000  # structured data needs more room than a spoken reply
_SAVE_SECONDS = 5.0
_DB_ERRORS = (SQLAlchemyError, StorageError, OSError, RuntimeError)


class LiveCall(Protocol):
    """What the analyzer reads of a live session when its call ends."""

    @property
    def assistant(self) -> Assistant: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...


class ModelSource(Protocol):
    async def open(self, model: ModelConfig, tenant_id: str | None) -> tuple[LanguageModel, Closer]:
        """The assistant's model for `tenant_id`'s call, and how to close it. Raises
        ConfigError when it cannot be used (no credential)."""
        ...

    async def aclose(self) -> None: ...


class CloudModels:
    """The assistant's cloud model, with the keys its call had (`control.providers`), on
    connection pools of its own (closed by `aclose`): the operator's provider URLs, and the
    egress-guarded pool for a tenant's custom LLM."""

    def __init__(self, settings: Settings, stores: Stores) -> None:
        self.settings = settings
        self.stores = stores
        policy = egress_policy(settings)

        def guarded(limits: httpx.Limits) -> httpx.AsyncClient:
            return guarded_client(
                policy, timeout_seconds=60.0, max_connections=limits.max_connections or 100
            )

        self.http = HttpPool(settings.max_calls)
        self.tenant_http = HttpPool(settings.max_calls, build=guarded)

    async def open(self, model: ModelConfig, tenant_id: str | None) -> tuple[LanguageModel, Closer]:
        keys = await provider_keys(self.stores, self.settings, tenant_id)
        # The part's own timeoutSeconds bounds the request; the adapter's must not cut it.
        adapters = CloudAdapters(
            self.settings,
            StageTimeouts(llm_first_token=60.0),
            http=self.http,
            tenant_http=self.tenant_http,
            keys=keys,
        )
        config = model.model_copy(
            update={
                # The analysis prompts are the whole request: not the assistant's own system
                # messages (which the adapter would put first), nor its tools.
                "messages": [],
                "tools": [],
                "tool_ids": [],
                "temperature": 0.0,
                "max_tokens": ANALYSIS_MAX_TOKENS,
            }
        )
        return adapters.llm(config), adapters.aclose

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.tenant_http.aclose()


def completer(llm: LanguageModel) -> Complete:
    """One non-tool answer from `llm`, its text deltas joined (bounded)."""

    async def complete(messages: Sequence[ChatMessage]) -> str:
        parts: list[str] = []
        size = 0
        stream = llm.stream(messages)
        try:
            async for delta in stream:
                if delta.text:
                    parts.append(delta.text)
                    size += len(delta.text)
                    if size > MAX_ANSWER_CHARS:
                        raise AnalysisFailed(
                            "invalid-answer", f"the answer is over {MAX_ANSWER_CHARS} characters"
                        )
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:  # a timeout must not leave the provider's stream open
                await close()
        return "".join(parts)

    return complete


async def analyse(
    plan: AnalysisPlan,
    facts: CallFacts,
    complete: Callable[[], Awaitable[Complete]],
    result: CallAnalysis,
    on_outcome: Outcome | None = None,
) -> None:
    """Fill `result` with the plan's enabled parts, run concurrently, each within its own
    `timeoutSeconds` (getting the model, `complete()`, counts against it). A failed part is
    recorded in `result.errors`; cancelled, the unfinished parts are recorded as cancelled."""

    async def part(name: Part, seconds: float, prompt: list[ChatMessage], parse: Any) -> None:
        outcome = "ok"
        try:
            try:
                async with asyncio.timeout(seconds):
                    answer = await (await complete())(prompt)
            except TimeoutError:
                raise AnalysisFailed("timeout", f"no answer within {seconds:g} s") from None
            except ConfigError as exc:
                raise AnalysisFailed("no-model", str(exc)) from None
            except ProviderError as exc:
                raise AnalysisFailed("model-error", str(exc)) from None
            value = parse(answer)
            if name == "summary":
                result.summary = value
            elif name == "structuredData":
                result.structured_data = value
            else:
                result.success_evaluation = value
        except AnalysisFailed as exc:
            outcome = exc.kind
            result.failed(name, exc)
        except Exception:
            # The boundary of one part: a bug in it fails the part, never the other parts.
            log.exception("analysis part %s failed", name)
            outcome = "internal-error"
            result.failed(name, AnalysisFailed(outcome, "AVA failed; see its log"))
        except asyncio.CancelledError:
            outcome = "cancelled"
            result.failed(name, AnalysisFailed("cancelled", "the server shut down first"))
            raise
        finally:
            if on_outcome is not None:
                on_outcome(name, outcome)

    summary, data, success = (
        plan.summary_plan,
        plan.structured_data_plan,
        plan.success_evaluation_plan,
    )
    async with asyncio.TaskGroup() as tasks:
        if summary.enabled:
            tasks.create_task(
                part("summary", summary.timeout_seconds, summary_prompt(summary, facts),
                     parse_summary)
            )  # fmt: skip
        if data.enabled and data.data_schema is not None:
            schema = data.data_schema
            tasks.create_task(
                part("structuredData", data.timeout_seconds, structured_data_prompt(data, facts),
                     lambda text: parse_structured_data(text, schema))
            )  # fmt: skip
        if success.enabled:
            rubric = success.rubric
            tasks.create_task(
                part("successEvaluation", success.timeout_seconds,
                     success_evaluation_prompt(success, facts),
                     lambda text: parse_success_evaluation(text, rubric))
            )  # fmt: skip


@dataclass(slots=True)
class _Job:
    call_id: str
    tenant_id: str | None
    model: ModelConfig
    plan: AnalysisPlan
    facts: CallFacts
    releases: list[ReportRelease] = field(default_factory=list)
    result: CallAnalysis = field(default_factory=CallAnalysis)
    released: bool = False


class PostCallAnalyzer(CallJobs[_Job]):
    """Analyses ended calls (see the module docstring)."""

    def __init__(
        self,
        live: Mapping[str, LiveCall],
        models: ModelSource,
        save: Save,
        *,
        on_outcome: Outcome | None = None,
        max_jobs: int = 1000,
    ) -> None:
        super().__init__("analysis", max_jobs)
        self._live = live
        self.models = models
        self._save = save
        self._on_outcome = on_outcome

    # --- the sink side (never blocks, never raises) ---------------------------------------------

    def emit(self, event: CallEvent) -> None:
        if not isinstance(event, CallEnded) or not self.accepting:
            return
        call = self._live.get(event.call_id)
        if call is None:
            return
        assistant = call.assistant
        plan = assistant.analysis_plan
        if not plan.any_enabled or assistant.model.provider == "local":
            return  # the offline responder answers callers, not analysis prompts
        history = event.summary.get("messages") if isinstance(event.summary, Mapping) else None
        facts = CallFacts.from_history(history or [], event.reason.value)
        if facts.conversation < plan.min_messages_threshold:
            return
        tenant = call.metadata.get("tenant_id") or None
        if self._room_for(event.call_id):
            job = _Job(event.call_id, tenant, assistant.model, plan, facts)
            self._start(event.call_id, job, self._run(job))

    def hold(self, call_id: str, release: ReportRelease) -> bool:
        """If `call_id` is being analysed, call `release` with the report's `summary` and
        `analysis` once it is done (within the plan's timeouts) and return True."""
        job = self._jobs.get(call_id)
        if job is None or job.released:
            return False
        job.releases.append(release)
        return True

    # --- the jobs -------------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        opened: asyncio.Task[tuple[LanguageModel, Closer]] | None = None

        async def complete() -> Complete:
            nonlocal opened
            if opened is None:
                opened = asyncio.ensure_future(self.models.open(job.model, job.tenant_id))
            # Shielded: one part's timeout must not cancel the model the others share.
            llm, _ = await asyncio.shield(opened)
            return completer(llm)

        try:
            await analyse(job.plan, job.facts, complete, job.result, self._on_outcome)
        finally:
            self._unfinished(job)
            self._release(job)
            if opened is not None:
                await _close(opened)
            await self._write(job)

    async def _write(self, job: _Job) -> None:
        try:
            async with asyncio.timeout(_SAVE_SECONDS):
                await self._save(job.call_id, job.result.to_json())
        except (TimeoutError, *_DB_ERRORS):
            log.error("call %s: analysis not written", job.call_id, exc_info=True)
        except Exception:
            # The boundary of one call's analysis: a bug here must not end the TaskGroup, and
            # with it every other call's analysis.
            log.exception("call %s: writing the analysis failed", job.call_id)

    def _unfinished(self, job: _Job) -> None:
        """Parts with neither a result nor an error (cancelled before they began): cancelled."""
        plan, result = job.plan, job.result
        parts: list[tuple[Part, bool, object]] = [
            ("summary", plan.summary_plan.enabled, result.summary),
            ("structuredData", plan.structured_data_plan.enabled, result.structured_data),
            ("successEvaluation", plan.success_evaluation_plan.enabled, result.success_evaluation),
        ]
        for name, enabled, value in parts:
            if enabled and value is None and name not in result.errors:
                result.failed(name, AnalysisFailed("cancelled", "the server shut down first"))
                if self._on_outcome is not None:
                    self._on_outcome(name, "cancelled")

    def _release(self, job: _Job) -> None:
        job.released = True
        fields = {"summary": job.result.summary or "", "analysis": job.result.to_json()}
        for release in job.releases:
            try:
                release(fields)
            except Exception:  # one listener's bug must not keep the others' reports
                log.exception("call %s: releasing the end-of-call-report failed", job.call_id)
        job.releases.clear()


async def _close(opened: asyncio.Task[tuple[LanguageModel, Closer]]) -> None:
    if not opened.done():
        opened.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConfigError, ProviderError):
        _, close = await opened
        await close()


@asynccontextmanager
async def running_analysis(
    analyzer: PostCallAnalyzer, grace_seconds: float = 5.0
) -> AsyncIterator[PostCallAnalyzer]:
    """The analyzer's jobs for the app's lifetime; at the end, running analyses get
    `grace_seconds`, then are cancelled (their reports released, their parts recorded)."""
    try:
        async with running_jobs(analyzer, grace_seconds):
            yield analyzer
    finally:
        await analyzer.models.aclose()


def post_call_analyzer(
    settings: Settings,
    stores: Stores,
    live: Mapping[str, LiveCall],
    recorder: CallRecorder,
    metrics: Metrics,
) -> PostCallAnalyzer:
    """The app's analyzer: the assistants' cloud models, results written once the recorder has
    written the call's own events (its row exists then), outcomes counted in `metrics`."""

    async def save(call_id: str, analysis: dict[str, Any]) -> None:
        await recorder.flush()
        await stores.calls.set_analysis(call_id, analysis)

    return PostCallAnalyzer(
        live,
        CloudModels(settings, stores),
        save,
        on_outcome=metrics.analysis_part,
        max_jobs=max(100, 2 * settings.max_calls),
    )

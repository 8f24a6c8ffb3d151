"""Vapi's `assistant-request`: an inbound call on a number with no assistant asks its server.

It runs inside `POST /twilio/voice`, before any TwiML is returned: the caller hears ringing
while the server decides, exactly once. Asking later, at the media stream's `start`, would put
the wait after the call is answered (dead air) and still need the voice webhook first. The
answer becomes TwiML at once:

- `{assistant}` (transient) → `<Connect><Stream>`; the assistant waits in `HeldAssistants`
  (keyed by tenant and call id, bounded, as long as the stream token lives; with Redis, sealed
  and shared by every node) for the media stream (the token names it with `pending`);
- `{assistantId}` (one of the number's tenant's assistants) → `<Connect><Stream>` as for a
  number with that assistant;
- either with `assistantOverrides` → the overrides deep-merged onto it (`voice.variables`),
  validated like an assistant, and the effective assistant goes on as a transient one (an
  invalid result refuses the call, its reason naming the field);
- `{destination: {number}}` → `<Dial>`; `{error}` → `<Say>` the error, `<Hangup>`;
- no answer within `assistant_request_timeout_seconds` (Vapi: 7.5 s), a non-2xx, a body that is
  not JSON, an invalid assistant → an apology, `<Hangup>`.

The call id the server is told is minted by the voice webhook (random, never derived from the
CallSid, which another tenant's signed webhook could repeat) and travels in the stream token.
Every call that does not reach an assistant is still recorded (GET /call) with Vapi's
`assistant-request-*` ended reason. The request is one attempt (the budget leaves no room for
retries), signed like every webhook (`voice.server_messages`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from control.egress import egress_policy
from control.state import AppState
from media.twilio.twiml import dial, say_and_hangup
from storage import PhoneNumberRecord
from storage.redis_assistants import RedisAssistants, SharedStoreUnavailable
from voice.assistant import Assistant, with_overrides
from voice.egress import EgressDenied, EgressPolicy
from voice.egress_http import error_kind, guarded_client, post_capped
from voice.server_messages import (
    AssistantAnswer,
    ServerTarget,
    call_json,
    encode,
    envelope,
    parse_assistant_answer,
    public_server,
)
from voice.types import EndedReason

__all__ = [
    "FAILED_SAY",
    "MAX_ANSWER_BYTES",
    "HeldAssistants",
    "PendingAssistants",
    "Routed",
    "ask_for_assistant",
    "request_assistant",
]

log = logging.getLogger("ava.twilio")

FAILED_SAY = "Sorry, this call cannot be connected right now. Please try again later. Goodbye."
MAX_ANSWER_BYTES = 256 * 1024  # a transient assistant is a few kB; more is not an answer


class PendingAssistants:
    """Transient assistants between the voice webhook and their media stream, by tenant and
    call id (both from the stream token, which only this server signs).

    Bounded: at most `max_entries` (overflow: the oldest is dropped; its stream then ends
    with a server error) and each for `ttl` seconds (the stream token's lifetime)."""

    def __init__(
        self, ttl: float, max_entries: int = 1000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[float, Assistant]] = OrderedDict()

    def put(self, tenant_id: str, call_id: str, assistant: Assistant) -> None:
        self._expire()
        self._items[(tenant_id, call_id)] = (self._clock() + self.ttl, assistant)
        while len(self._items) > self.max_entries:
            (_, dropped), _ = self._items.popitem(last=False)
            log.error("pending transient assistants full: call %s's dropped", dropped)

    def take(self, tenant_id: str, call_id: str) -> Assistant | None:
        self._expire()
        item = self._items.pop((tenant_id, call_id), None)
        return None if item is None else item[1]

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            first = next(iter(self._items.values()))
            if first[0] > now:
                return
            self._items.popitem(last=False)


class HeldAssistants:
    """Where a transient assistant waits for its media stream: with Redis, every node's store
    (`shared`: sealed, single use, the stream token's lifetime), so the stream may land on any
    node behind the balancer; without it (or while Redis is down), this process (`local`), and
    a stream that lands on another node then ends with a server error (logged)."""

    def __init__(self, local: PendingAssistants, shared: RedisAssistants | None) -> None:
        self.local = local
        self.shared = shared

    async def put(self, tenant_id: str, call_id: str, assistant: Assistant) -> None:
        if self.shared is not None:
            try:
                await self.shared.put(tenant_id, call_id, assistant)
                return
            except SharedStoreUnavailable as exc:
                log.error("call %s: transient assistant held on this node only: %s", call_id, exc)
        self.local.put(tenant_id, call_id, assistant)

    async def take(self, tenant_id: str, call_id: str) -> Assistant | None:
        here = self.local.take(tenant_id, call_id)
        if self.shared is None or here is not None:
            return here
        try:
            there = await self.shared.take(tenant_id, call_id)
        except SharedStoreUnavailable as exc:
            log.error("call %s: shared transient assistants unavailable: %s", call_id, exc)
            there = None
        return there

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()


async def request_assistant(
    target: ServerTarget,
    message: dict[str, Any],
    *,
    seconds: float,
    policy: EgressPolicy | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
    wall: Callable[[], float] = time.time,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AssistantAnswer:
    """POST `message` to `target` once, signed; its answer, or why there is none.

    The server is the tenant's: reached only where `policy` (the operator's egress policy;
    None: the strict default) allows, within `seconds` end to end, its answer read up to
    `max_bytes`. A failure is recorded as an HTTP status or a fixed error kind, never with the
    server's body or the exception's text. `transport` replaces the network (tests)."""
    answer, _ = await _request(
        target, message, seconds=seconds, policy=policy, max_bytes=max_bytes, wall=wall,
        transport=transport,
    )  # fmt: skip
    return answer


async def _request(
    target: ServerTarget,
    message: dict[str, Any],
    *,
    seconds: float,
    policy: EgressPolicy | None,
    max_bytes: int,
    wall: Callable[[], float],
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[AssistantAnswer, object]:
    """`request_assistant`'s answer and the answer's `assistantOverrides` (None: none)."""
    body = encode(message)
    headers = target.request_headers(body, int(wall()))
    failed = EndedReason.ASSISTANT_REQUEST_FAILED
    try:
        async with guarded_client(
            policy or EgressPolicy(), timeout_seconds=seconds, max_connections=1,
            transport=transport,
        ) as http:  # fmt: skip
            status, answer = await post_capped(
                http, target.url, content=body, headers=headers, limit=max_bytes,
                timeout_seconds=seconds,
            )  # fmt: skip
    except TimeoutError:
        return AssistantAnswer.failed(failed, f"no answer within {seconds:g}s"), None
    except (httpx.HTTPError, httpx.InvalidURL, EgressDenied) as exc:
        kind = error_kind(exc)
        log.info("assistant-request to the number's server failed: %s: %s", kind, exc)
        return AssistantAnswer.failed(failed, f"the request failed: {kind}"), None
    if 300 <= status < 400:
        return AssistantAnswer.failed(failed, f"the server answered HTTP {status} (redirect)"), None
    parsed = parse_assistant_answer(status, answer)
    overrides = None
    if parsed.assistant is not None or parsed.assistant_id is not None:
        # parse_assistant_answer read it as a JSON object already
        overrides = json.loads(answer).get("assistantOverrides")
    return parsed, overrides


def _overridden(base: dict[str, Any], overrides: object) -> Assistant | AssistantAnswer:
    """The effective assistant of an answer with `assistantOverrides`, or the failure that
    names the field that makes it invalid."""
    invalid = EndedReason.ASSISTANT_REQUEST_RETURNED_INVALID_ASSISTANT
    if not isinstance(overrides, dict):
        return AssistantAnswer.failed(invalid, "assistantOverrides must be an object")
    try:
        return with_overrides(base, overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return AssistantAnswer.failed(invalid, f"assistantOverrides.{where}: {first['msg']}")
    except ValueError as exc:
        return AssistantAnswer.failed(invalid, f"assistantOverrides.{exc}")


@dataclass(frozen=True, slots=True)
class Routed:
    """The voice webhook's answer: TwiML to return now (`twiml`), or claims for the stream
    token of a call that goes on to an assistant."""

    twiml: str | None = None
    claims: dict[str, str] | None = None


async def ask_for_assistant(
    state: AppState,
    number: PhoneNumberRecord,
    form: dict[str, str],
    pending: HeldAssistants,
    call_id: str,
) -> Routed:
    """Route an inbound call on `number` (which has no assistant) by asking its server; the
    call is `call_id` (the voice webhook's, carried on by the stream token)."""
    settings = state.settings
    try:
        target = ServerTarget.from_config(number.server)
    except ValueError as exc:
        log.warning("number %s: server unusable for assistant-request: %s", number.id, exc)
        target = None
    if target is None:
        return await _refuse(state, number, form, call_id, AssistantAnswer.failed(
            EndedReason.ASSISTANT_REQUEST_RETURNED_NO_ASSISTANT,
            "the number has no assistant and no server to ask",
        ))  # fmt: skip
    customer = {"number": form.get("From", "")}
    phone = {**number.to_vapi(), "server": public_server(number.server)}
    metadata = {
        "tenant_id": number.tenant_id,
        "phone_number_id": number.id,
        "call_sid": form.get("CallSid", ""),
        "from": customer["number"],
    }
    now = time.time()
    message = envelope(
        "assistant-request",
        round(now * 1000),
        call_json(call_id, metadata, "ringing", now),
        phoneNumber=phone,
        customer=customer,
    )
    answer, overrides = await _request(
        target, message, seconds=settings.assistant_request_timeout_seconds,
        policy=egress_policy(settings),
        max_bytes=min(MAX_ANSWER_BYTES, settings.max_response_bytes), wall=time.time,
    )  # fmt: skip
    claims: dict[str, str] = {"tenant_id": number.tenant_id, "phone_number_id": number.id}
    if answer.assistant is not None:
        effective: Assistant | AssistantAnswer = answer.assistant
        if overrides is not None:
            effective = _overridden(answer.assistant.to_json(), overrides)
        if isinstance(effective, Assistant):
            await pending.put(number.tenant_id, call_id, effective)
            return Routed(claims=claims | {"pending": "1", "assistant_id": ""})
        answer = effective
    assistant_id = answer.assistant_id
    if assistant_id is not None:
        record = await state.stores.assistants.get(number.tenant_id, assistant_id)
        if record is None:
            answer = AssistantAnswer.failed(
                EndedReason.ASSISTANT_REQUEST_RETURNED_INVALID_ASSISTANT,
                f"assistant {assistant_id} not found",
            )
        elif overrides is None:
            return Routed(claims=claims | {"assistant_id": assistant_id})
        else:
            # The stored assistant with the overrides: a transient one of this call only,
            # recorded under the stored assistant's id.
            merged = _overridden(record.config, overrides)
            if isinstance(merged, Assistant):
                await pending.put(number.tenant_id, call_id, merged)
                return Routed(claims=claims | {"pending": "1", "assistant_id": assistant_id})
            answer = merged
    return await _refuse(state, number, form, call_id, answer)


async def _refuse(
    state: AppState,
    number: PhoneNumberRecord,
    form: dict[str, str],
    call_id: str,
    answer: AssistantAnswer,
) -> Routed:
    """TwiML for a call no assistant takes; the call is recorded with its reason."""
    reason = answer.reason or EndedReason.ASSISTANT_REQUEST_FAILED
    call_sid = form.get("CallSid", "")
    log.warning("call %s (%s): %s: %s", call_id, call_sid, reason.value, answer.detail)
    state.calls.reject(call_id, reason, answer.detail, call_sid=call_sid)
    calls = state.stores.calls
    # Twilio asks again (the number's fallback URL) with the same CallSid: one record per call.
    # Looked up within the number's tenant only: another tenant may send the same CallSid.
    if call_sid and await calls.find_by_twilio_sid(number.tenant_id, call_sid) is not None:
        return _refusal(answer, form)
    await calls.create_call(
        number.tenant_id,
        type="inboundPhoneCall",
        call_id=call_id,
        status="in-progress" if answer.destination else "ringing",
        phone_number_id=number.id,
        twilio_call_sid=call_sid or None,
        from_number=form.get("From") or None,
        to_number=form.get("To") or None,
    )
    await calls.finish_call(call_id, reason.value, answer.detail)
    return _refusal(answer, form)


def _refusal(answer: AssistantAnswer, form: dict[str, str]) -> Routed:
    if answer.destination is not None:
        return Routed(twiml=dial(answer.destination, caller_id=form.get("From") or None))
    return Routed(twiml=say_and_hangup(answer.say or FAILED_SAY))

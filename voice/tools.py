"""Vapi-shaped tools: what the model is offered, and running the `function` tools it calls.

`ToolSet` reads `model.tools` (the control plane has already resolved `model.toolIds` into it):
`function` tools, and the built-ins `endCall` and `transferCall`, all offered to the model as
OpenAI function schemas. Other Vapi tool types are not offered (the model cannot call what AVA
cannot do).

`ToolRunner` runs the function calls of one model response: concurrently (at most
`max_concurrency` at once), each as its own Vapi `tool-calls` server message POSTed to the tool's
`server.url` (else the assistant's), signed as `voice.server_messages` describes, within the
server's `timeoutSeconds` (end to end: connecting, sending and reading the answer). Its answer
`{"results": [{"toolCallId", "result" | "error"}]}` becomes the tool message the model sees. A
timeout, a non-2xx status, an unreadable body or a missing result becomes a result that says the
tool failed — the model is told and the call goes on — and the outcome is marked failed so the
session records a `ToolCallFailed`.

The tool server is the tenant's: requests go through `voice.egress_http` (the operator's
`EgressPolicy` checked on the address connected to, no redirects, the answer read up to
`max_response_bytes`). A failed request is described by its HTTP status or a fixed error kind
only, never by the server's body or the exception's text (they would tell a tenant about the
operator's network). The HTTP client is per call (created on first use, closed by `aclose()`
when the call ends).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from voice.assistant import ModelConfig
from voice.egress import EgressDenied, EgressPolicy
from voice.egress_http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    error_kind,
    guarded_client,
    post_capped,
)
from voice.errors import ConfigError
from voice.ports import TransferDestination
from voice.server_messages import ServerTarget, encode, envelope
from voice.types import ToolCall

__all__ = [
    "DEFAULT_FILLERS",
    "END_CALL",
    "TRANSFER_CALL",
    "FunctionTool",
    "ToolOutcome",
    "ToolRunner",
    "ToolSet",
    "tool_call_json",
]

log = logging.getLogger("ava.tools")

END_CALL = "endCall"
TRANSFER_CALL = "transferCall"
# Vapi's default `request-start` fillers, used when a tool asks for one without its own text.
DEFAULT_FILLERS = (
    "Hold on a sec.",
    "One moment.",
    "Just a sec.",
    "Give me a moment.",
    "This'll just take a sec.",
)
_MAX_RESULT_CHARS = 8000


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    config: dict[str, Any]  # the Vapi tool JSON, as sent back in `toolWithToolCallList`
    server: ServerTarget | None
    messages: tuple[dict[str, Any], ...] = ()

    def message(self, kind: str) -> dict[str, Any] | None:
        return next((m for m in self.messages if m.get("type") == kind), None)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call: ToolCall
    content: str  # what the model is told
    failed: bool = False
    error: str = ""  # why, when failed

    @property
    def name(self) -> str:
        return self.call.name


def _schema(name: str, function: Mapping[str, Any], default_description: str) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        # The model is sent a JSON Schema object; anything else would fail the LLM request.
        raise ConfigError(f"tool {name}: function.parameters must be a JSON Schema object")
    spec: dict[str, Any] = {
        "name": name,
        "description": str(function.get("description") or default_description),
        "parameters": dict(parameters),
    }
    if function.get("strict") is not None:
        spec["strict"] = bool(function["strict"])
    return {"type": "function", "function": spec}


def _destinations(tool: Mapping[str, Any], where: str) -> tuple[TransferDestination, ...]:
    found: list[TransferDestination] = []
    for i, entry in enumerate(tool.get("destinations") or ()):
        if not isinstance(entry, Mapping) or entry.get("type", "number") != "number":
            continue  # SIP and assistant destinations are not supported: not offered
        found.append(TransferDestination.from_vapi(entry, f"{where}.destinations[{i}]"))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ToolSet:
    functions: Mapping[str, FunctionTool] = field(default_factory=dict)
    end_call: str | None = None  # the function name the model calls to hang up
    transfer: str | None = None
    destinations: tuple[TransferDestination, ...] = ()
    schemas: tuple[dict[str, Any], ...] = ()  # OpenAI `tools`

    @classmethod
    def from_model(cls, model: ModelConfig) -> ToolSet:
        """Raises ConfigError naming the tool and field that cannot be used."""
        functions: dict[str, FunctionTool] = {}
        schemas: list[dict[str, Any]] = []
        end_call = transfer = None
        destinations: tuple[TransferDestination, ...] = ()
        for index, tool in enumerate(model.tools):
            where = f"model.tools[{index}]"
            kind = tool.get("type")
            function = tool.get("function") or {}
            if not isinstance(function, Mapping):
                raise ConfigError(f"{where}.function must be an object")
            if kind == "function":
                name = function.get("name")
                if not name:
                    raise ConfigError(f"{where}: a function tool needs function.name")
                try:
                    server = ServerTarget.from_config(tool.get("server"))
                except ValueError as exc:
                    raise ConfigError(f"{where}.{exc}") from exc
                messages = tuple(m for m in tool.get("messages") or () if isinstance(m, dict))
                public = dict(tool)  # as echoed in tool-calls messages: no credentials
                if isinstance(tool.get("server"), Mapping):
                    public["server"] = {
                        k: v for k, v in tool["server"].items() if k not in ("secret", "headers")
                    }
                functions[str(name)] = FunctionTool(str(name), public, server, messages)
                schemas.append(_schema(str(name), function, ""))
            elif kind == "endCall":
                end_call = str(function.get("name") or END_CALL)
                schemas.append(
                    _schema(
                        end_call, function, "End the call. Use it when the conversation is over."
                    )
                )
            elif kind == "transferCall":
                transfer = str(function.get("name") or TRANSFER_CALL)
                destinations = _destinations(tool, where)
                numbers = [d.number for d in destinations]
                described = "; ".join(
                    f"{d.number}: {d.description}" for d in destinations if d.description
                )
                parameters = {
                    "type": "object",
                    "properties": {
                        "destination": {
                            "type": "string",
                            "enum": numbers,
                            "description": "The number to transfer to."
                            + (f" {described}" if described else ""),
                        }
                    },
                    "required": ["destination"],
                }
                schemas.append(
                    _schema(
                        transfer,
                        {**function, "parameters": function.get("parameters") or parameters},
                        "Transfer the caller to another phone number.",
                    )
                )
            else:
                log.info("%s: tool type %r is not supported and is not offered", where, kind)
        return cls(functions, end_call, transfer, destinations, tuple(schemas))

    def destination_for(self, call: ToolCall) -> TransferDestination | None:
        wanted = _arguments(call.arguments).get("destination")
        for destination in self.destinations:
            if destination.number == wanted:
                return destination
        return self.destinations[0] if len(self.destinations) == 1 else None


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_call_json(call: ToolCall, *, parsed: bool = False) -> dict[str, Any]:
    """OpenAI's tool-call shape; `parsed`: arguments as an object (as Vapi's tool-calls message
    sends them), else the model's JSON text."""
    arguments: Any = _arguments(call.arguments) if parsed else call.arguments
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


class ToolRunner:
    """Runs function tool calls for one call. `context()` gives the envelope's `call`,
    `assistant`, … fields at the moment of the request.

    `policy` is the operator's egress policy (None: the strict default, no internal address
    allowed); `transport` replaces the network under it (tests)."""

    def __init__(
        self,
        tools: ToolSet,
        *,
        assistant_server: ServerTarget | None,
        context: Callable[[], dict[str, Any]],
        wall_clock: Callable[[], float] = time.time,
        max_concurrency: int = 4,
        policy: EgressPolicy | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.tools = tools
        self.assistant_server = assistant_server
        self._context = context
        self._wall = wall_clock
        self._limit = asyncio.Semaphore(max_concurrency)
        self._policy = policy or EgressPolicy()
        self._max_bytes = max_response_bytes
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._fillers = itertools.cycle(DEFAULT_FILLERS)

    def filler(self, calls: Sequence[ToolCall]) -> str | None:
        """The `request-start` line to say while `calls` run (the first tool that has one)."""
        for call in calls:
            tool = self.tools.functions.get(call.name)
            message = tool.message("request-start") if tool is not None else None
            if message is not None:
                content = message.get("content")
                return str(content) if content else next(self._fillers)
        return None

    async def run(self, calls: Sequence[ToolCall]) -> list[ToolOutcome]:
        """One outcome per call, in call order (as Vapi requires of results)."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._run_one(call)) for call in calls]
        return [t.result() for t in tasks]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run_one(self, call: ToolCall) -> ToolOutcome:
        tool = self.tools.functions.get(call.name)
        if tool is None:
            return _failed(call, f"there is no tool named {call.name!r}")
        server = tool.server or self.assistant_server
        if server is None:
            return _failed(call, "the tool has no server.url (nor has the assistant)")
        async with self._limit:
            return await self._post(call, tool, server)

    async def _post(self, call: ToolCall, tool: FunctionTool, server: ServerTarget) -> ToolOutcome:
        now = self._wall()
        item = tool_call_json(call, parsed=True)
        context = self._context()
        message = envelope(
            "tool-calls",
            round(now * 1000),
            context.pop("call", {}),
            toolCallList=[item],
            toolWithToolCallList=[{**tool.config, "toolCall": item}],
            **context,
        )
        body = encode(message)
        seconds = server.timeout_seconds
        if self._client is None:
            self._client = guarded_client(
                self._policy, timeout_seconds=seconds, transport=self._transport
            )
        try:
            status, answer = await post_capped(
                self._client,
                server.url,
                content=body,
                headers=server.request_headers(body, int(now)),
                limit=self._max_bytes,
                timeout_seconds=seconds,
            )
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, EgressDenied) as exc:
            kind = error_kind(exc)
            if kind == "timeout":  # the deadline, or httpx's per-phase timeout (the same value)
                return _failed(call, f"the tool server did not answer within {seconds:g}s")
            log.info("tool %s: request to its server failed: %s: %s", call.name, kind, exc)
            return _failed(call, _WHY.get(kind, "the tool server request failed") + f" ({kind})")
        if not 200 <= status < 300:
            return _failed(call, f"the tool server answered HTTP {status} ({error_kind(status)})")
        return _read_results(call, answer)


# Fixed texts for the model and the call record: nothing of the server's answer or the error.
_WHY = {
    EgressDenied.kind: "the tool server's address is not allowed",
    ResponseTooLarge.kind: "the tool server's answer is too large",
    "connect-error": "the tool server could not be reached",
    "invalid-response": "the tool server's answer is not valid HTTP",
    "invalid-url": "the tool server's URL is not usable",
}


def _read_results(call: ToolCall, content: bytes) -> ToolOutcome:
    try:
        answer = json.loads(content)
    except ValueError:
        return _failed(call, "the tool server's answer is not JSON")
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        return _failed(call, 'the tool server\'s answer has no "results" list')
    mine = next(
        (r for r in results if isinstance(r, dict) and r.get("toolCallId") == call.id), None
    )
    if mine is None:
        return _failed(call, f"the tool server's answer has no result for {call.id}")
    if mine.get("error") is not None:
        error = _text(mine["error"])
        return ToolOutcome(call, f"Error: {error}", failed=True, error=error)
    if "result" not in mine:
        return _failed(call, "the tool server's result has neither result nor error")
    return ToolOutcome(call, _text(mine["result"]))


def _text(value: Any) -> str:
    # Vapi requires strings; an object is forgiven and passed on as its JSON.
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:_MAX_RESULT_CHARS]


def _failed(call: ToolCall, why: str) -> ToolOutcome:
    content = f"Error: the {call.name} tool failed: {why}. Tell the caller it could not be done."
    return ToolOutcome(call, content, failed=True, error=why)

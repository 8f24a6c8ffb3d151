"""Any OpenAI-compatible Chat Completions endpoint, streamed, through the official SDK.

Wire format: protocols.md §4.1. Text deltas are yielded as they arrive; tool calls stream as
fragments keyed by `index` and are yielded once, complete, when the choice finishes; the usage
chunk (`stream_options.include_usage`) becomes a last `LlmDelta` with token counts, the prompt
tokens OpenAI served from its prompt cache (`prompt_tokens_details.cached_tokens`) among them.

The SDK's own retries are off (`max_retries=0`): the session owns retry and fallback, and a
silent SDK retry would spend the caller's latency budget without anyone deciding to.

`http_client` lets every call share one process-wide connection pool: building an SDK client
with its own pool costs ~16 ms of CPU (an SSL context) per call, before the greeting can leave.
A shared client is the owner's to close; `aclose()` then leaves it open.

The request goes through the SDK's client (auth, base URL, timeouts, status errors, SSE decoding
and its in-stream `error` handling) but not through `chat.completions.create`: that method
rebuilds the whole message list through the SDK's TypedDict transform and every chunk into a
pydantic model, ~22 ms of CPU per streamed reply with a 17-message history (measured against the
loopback fake), about a third of a call's CPU budget at ~10 requests a call-minute. The body is
the documented wire format (protocols.md §4.1) and the chunks are read as the JSON they are,
checked field by field.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai

from voice.egress_http import error_kind
from voice.errors import ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers._http import status_error
from voice.types import ChatMessage, LlmDelta, ToolCall

__all__ = ["OpenAiLlm"]

log = logging.getLogger("ava.providers")


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class OpenAiLlm:
    name = "openai"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        temperature: float = 0.5,
        max_tokens: int = 250,
        tools: Sequence[Mapping[str, Any]] | None = None,
        first_token_timeout: float = 4.0,
        stall_timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if first_token_timeout <= 0 or stall_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.tools = [dict(t) for t in tools] if tools else []
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self._owns_http = http_client is None
        # `timeout` bounds every read, so a stream that stalls after its first token still ends.
        # The SDK sends it with each request, so it holds on a shared client too. The SDK accepts
        # an `httpx.AsyncClient` (and maps its errors) though its annotation names only httpx2.
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=stall_timeout,
            http_client=cast(Any, http_client),
        )

    async def aclose(self) -> None:
        if self._owns_http:
            await self._client.close()

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[LlmDelta, None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_token_timeout
        with self._map_errors("first_token", self.first_token_timeout):
            async with asyncio.timeout_at(deadline):
                stream = await self._create(messages)
        try:
            calls: dict[int, _PartialCall] = {}
            first = True
            finished = False
            while True:
                # Never yield inside a deadline block: the timeout would cancel the consumer.
                if first:
                    with self._map_errors("first_token", self.first_token_timeout):
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(stream, None)
                else:
                    with self._map_errors("stream", self.stall_timeout):
                        chunk = await anext(stream, None)
                if chunk is None:
                    break
                deltas, done = self._consume(chunk, calls)
                finished = finished or done
                for delta in deltas:
                    first = False
                    yield delta
            if not finished:
                raise ProviderError(self.name, "stream ended before finish_reason", retryable=True)
        finally:
            await stream.close()

    async def _create(self, messages: Sequence[ChatMessage]) -> openai.AsyncStream[object]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_openai() for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self.temperature,
            "max_completion_tokens": self.max_tokens,
        }
        if self.tools:
            body["tools"] = self.tools
            body["tool_choice"] = "auto"
        # `cast_to=object`: each chunk is handed over as the decoded JSON, untouched.
        return await self._client.post(
            "/chat/completions",
            cast_to=object,
            body=body,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )

    def _consume(
        self, chunk: object, calls: dict[int, _PartialCall]
    ) -> tuple[list[LlmDelta], bool]:
        """The deltas one chunk produces, and whether the choice finished."""
        deltas: list[LlmDelta] = []
        finished = False
        if not isinstance(chunk, dict):
            raise ProviderProtocolError(self.name, f"malformed chunk: {type(chunk).__name__}")
        try:
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # we ask for one choice
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    if not isinstance(content, str):
                        raise TypeError(f"content is {type(content).__name__}")
                    deltas.append(LlmDelta(text=content))
                for fragment in delta.get("tool_calls") or ():
                    call = calls.setdefault(int(fragment["index"]), _PartialCall())
                    if fragment.get("id"):
                        call.id = str(fragment["id"])
                    function = fragment.get("function")
                    if function is not None:
                        if function.get("name") and not call.name:
                            call.name = str(function["name"])
                        call.arguments += str(function.get("arguments") or "")
                if choice.get("finish_reason") is not None:
                    finished = True
                    if calls:
                        deltas.append(LlmDelta(tool_calls=self._complete(calls)))
                        calls.clear()
            usage = chunk.get("usage")
            if usage is not None:
                prompt = int(usage["prompt_tokens"])
                deltas.append(
                    LlmDelta(
                        prompt_tokens=prompt,
                        completion_tokens=int(usage["completion_tokens"]),
                        cached_prompt_tokens=self._cached_tokens(usage, prompt),
                    )
                )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ProviderProtocolError(self.name, f"malformed chunk: {exc!r}") from exc
        return deltas, finished

    def _cached_tokens(self, usage: Mapping[str, Any], prompt: int) -> int | None:
        """`prompt_tokens_details.cached_tokens`: None when the server did not say (compatible
        servers omit the details or send null). A count no cache could produce is the server's
        bug and costs only the discount, never the reply: garbage or a negative is ignored, more
        than the prompt is clamped to it."""
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        if cached is None:
            return None
        if isinstance(cached, bool) or not isinstance(cached, int) or cached < 0:
            log.debug("%s: unusable cached_tokens %.40r", self.name, cached)
            return None
        return min(cached, max(prompt, 0))

    def _complete(self, calls: dict[int, _PartialCall]) -> tuple[ToolCall, ...]:
        done: list[ToolCall] = []
        for index in sorted(calls):
            call = calls[index]
            if not call.id or not call.name:
                raise ProviderProtocolError(self.name, f"tool call {index} has no id or name")
            done.append(ToolCall(id=call.id, name=call.name, arguments=call.arguments or "{}"))
        return tuple(done)

    @contextmanager
    def _map_errors(self, stage: str, seconds: float) -> Iterator[None]:
        try:
            yield
        except openai.APIStatusError as exc:
            raise status_error(self.name, stage, exc.status_code, exc.message) from exc
        except openai.APITimeoutError as exc:
            raise ProviderTimeout(self.name, stage, self.stall_timeout) from exc
        except openai.APIConnectionError as exc:
            # egress-denied, connect-error, …: a fixed kind (a custom-llm URL is the tenant's)
            kind = error_kind(exc.__cause__ or exc)
            raise ProviderError(
                self.name, f"{stage}: {kind}", retryable=kind != "egress-denied"
            ) from exc
        except openai.APIError as exc:
            # an `{"error": …}` event inside the stream: the provider failed mid-answer. Its
            # text is the remote's: logged, not recorded.
            log.warning("%s %s: error event: %s", self.name, stage, exc.message)
            raise ProviderError(self.name, f"{stage}: error event", retryable=True) from exc
        except TimeoutError as exc:
            raise ProviderTimeout(self.name, stage, seconds) from exc
        except ValueError as exc:
            # the SSE `data:` was not JSON
            raise ProviderProtocolError(self.name, f"{stage}: undecodable event") from exc

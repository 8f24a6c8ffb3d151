"""A protocol-faithful fake of OpenAI Chat Completions streaming and speech (protocols.md §4).

`POST /v1/chat/completions` writes `data: <chat.completion.chunk>` events exactly as the captured
streams do: a role delta first, content deltas (or tool-call deltas: index/id/name first, then
argument fragments), a finish_reason chunk, the usage chunk with empty `choices` when
`stream_options.include_usage`, then `data: [DONE]`. The reply comes from `config.reply`, a
callable of the request's messages: text, tool calls, or a `FakeResponse` with both (content
deltas first, then the tool-call deltas, finish_reason `tool_calls`, as a model that says
"Let me check." and then calls a tool streams it). `POST /v1/audio/speech` streams raw 24 kHz
s16le PCM whose length is proportional to the input text.

Two reply styles: `echo_reply` ("You said: …", the tests' default: a test can predict every word)
and `support_desk_reply`, what the benchmarks use: ordinary support-desk answers whose first
clause has 8+ words, as a real assistant's has, so a pipeline that waits for a whole first clause
before speaking pays for it here as it would in service. `tokens="subwords"` streams text the way
OpenAI's tokenizer cuts it (common short words whole with their leading space, longer words in
3-5 character pieces, punctuation on its own) instead of one word per delta.

Prompt caching as OpenAI applies it: a prompt that begins with 1024 or more tokens an earlier
request to the same fake also began with (same model and tools, same messages up to there)
reports them as `prompt_tokens_details.cached_tokens`, counted in whole 128-token blocks; any
other prompt reports 0. Tokens are the fake's usual count (the words of each message's content).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benchmarks.fakes.server import REJECT_STATUS, Fault, FaultSwitch, speech_like_pcm16

__all__ = [
    "SUPPORT_REPLIES",
    "FakeResponse",
    "FakeToolCall",
    "OpenAiFake",
    "OpenAiFakeConfig",
    "PromptCache",
    "Reply",
    "echo_reply",
    "first_clause",
    "subword_pieces",
    "support_desk_reply",
]

SPEECH_RATE = 24_000
# OpenAI's prompt caching: prefixes from 1024 tokens, in 128-token increments.
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK_TOKENS = 128
# Prefix digests the fake remembers (least recently used go first): a few MB however long a
# benchmark runs, where the real cache also forgets after minutes.
_CACHE_PREFIXES = 16_384


@dataclass(frozen=True)
class FakeToolCall:
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class FakeResponse:
    text: str = ""
    tool_calls: Sequence[FakeToolCall] = ()


Reply = str | Sequence[FakeToolCall] | FakeResponse


def echo_reply(messages: list[dict[str, Any]]) -> Reply:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return f"You said: {last['content']}" if last else "Hello! How can I help you today?"


# What a support-desk assistant says; every first clause (up to the first , ; : . ? !) has 8+ words
# and every reply is 110-150 characters (~6.5-9 s of the TTS fake's audio), so a caller can
# backchannel or interrupt well inside it.
SUPPORT_REPLIES = (
    "Sure, I can help you with that order right away. Could you give me the order number so I "
    "can pull up the details?",
    "Of course I can move that appointment for you today. I have openings on Tuesday at two and "
    "on Wednesday morning; which one suits you better?",
    "Thanks for waiting while I looked into your account for you. I can see the payment came "
    "through yesterday, so you are all set for this month.",
    "I understand how frustrating a late delivery can be for you. Let me check with the warehouse "
    "and see where the package is right now.",
    "Let me take a quick look at the account you mentioned earlier. It shows two open tickets, "
    "and I can walk you through each of them if you like.",
    "I can update the address on the file for you right now. Could you read me the new street "
    "address and the postal code, please?",
    "Happy to explain the charges on your latest bill for you. The first one is the monthly plan, "
    "and the second is a one-time fee for the new router.",
    "That sounds like something our technical team should look at closely. I can open a ticket "
    "now and someone will call you back within the hour.",
)
_CLAUSE_END = ",;:.?!"


def first_clause(text: str) -> str:
    """The text up to and including the first clause punctuation (all of it if there is none),
    a lone leading interjection ("Sure,") not counting as a clause, as no chunker cuts there."""
    for i, c in enumerate(text):
        if c in _CLAUSE_END and len(text[:i].split()) > 2:
            return text[: i + 1]
    return text


def support_desk_reply(messages: list[dict[str, Any]]) -> Reply:
    """A support-desk answer, varied by the caller's words (stable: a hash, not random)."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = str(last.get("content") or "") if last else ""
    return SUPPORT_REPLIES[zlib.crc32(text.encode()) % len(SUPPORT_REPLIES)]


class _InjectedDrop(Exception):
    """Raised inside a response body so the server cuts the connection mid-stream."""


@dataclass
class OpenAiFakeConfig:
    api_key: str = "test-key"
    reply: Callable[[list[dict[str, Any]]], Reply] = echo_reply
    first_token_latency: float = 0.3
    tokens_per_second: float = 40.0
    # "words": one word per delta (the tests count deltas); "subwords": as OpenAI's tokenizer.
    tokens: Literal["words", "subwords"] = "words"
    fault: Fault | None = None  # chat completions
    fault_count: int | None = None  # requests that get the fault; None: all
    fault_after_tokens: int = 0  # STALL/GARBAGE/DROP after this many content/argument deltas
    speech_first_byte_latency: float = 0.15
    speech_seconds_per_char: float = 0.06
    speech_chunk_bytes: int = 4801  # odd on purpose: network reads split samples too
    speech_realtime_factor: float = 4.0  # audio streams this many times faster than real time
    speech_fault: Fault | None = None
    speech_fault_count: int | None = None
    stall_limit: float = 60.0  # a stalled response gives up after this long regardless


@dataclass
class OpenAiFake:
    config: OpenAiFakeConfig = field(default_factory=OpenAiFakeConfig)
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    chat_request_times: list[float] = field(default_factory=list)  # time.time() of each
    replies: list[str] = field(default_factory=list)  # the text each chat request was given
    speech_requests: list[dict[str, Any]] = field(default_factory=list)
    speech_bytes_sent: list[int] = field(default_factory=list)
    unauthorized: int = 0

    def __post_init__(self) -> None:
        self._prompt_cache = PromptCache()
        self._chat_faults = FaultSwitch()
        self._speech_faults = FaultSwitch()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
            ]
        )

    # --- shared --------------------------------------------------------------------------------

    def _auth_error(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Bearer {self.config.api_key}":
            return None
        self.unauthorized += 1
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )

    async def _stall(self) -> None:
        # Writes nothing; Starlette cancels this when the client disconnects (ASGI spec < 2.4).
        await asyncio.sleep(self.config.stall_limit)

    # --- chat completions ----------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await request.json()
        self.chat_requests.append(body)
        self.chat_request_times.append(time.time())  # wall clock: benchmarks join other processes
        fault = self._chat_faults.take(self.config.fault, self.config.fault_count)
        if fault in REJECT_STATUS:
            return _fault_error(REJECT_STATUS[fault])
        reply = self.config.reply(list(body.get("messages", [])))
        self.replies.append(_reply_text(reply))
        cached = self._prompt_cache.admit(body)  # a prompt read in is cached, answered or not
        if not body.get("stream"):
            return JSONResponse(_completion(body, reply))
        return StreamingResponse(
            self._chunks(body, reply, fault, cached), media_type="text/event-stream"
        )

    async def _chunks(
        self, body: dict[str, Any], reply: Reply, fault: Fault | None, cached: int
    ) -> AsyncIterator[bytes]:
        cfg = self.config
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "gpt-4o-mini"),
            "system_fingerprint": "fp_fake",
        }

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

        def delta(content: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
            return event([choice])

        if fault is Fault.STALL and cfg.fault_after_tokens == 0:
            await self._stall()
            return
        await asyncio.sleep(cfg.first_token_latency)
        if isinstance(reply, FakeResponse):
            tools = bool(reply.tool_calls)
            pieces = self._text_pieces(reply.text) if reply.text else []
            pieces += _tool_pieces(reply.tool_calls)
            yield delta({"role": "assistant", "content": "", "refusal": None})
        elif isinstance(reply, str):
            tools = False
            pieces = self._text_pieces(reply)
            yield delta({"role": "assistant", "content": "", "refusal": None})
        else:
            tools = True
            # as captured: the first tool-call delta also carries the role
            pieces = _tool_pieces(reply)
            if pieces:
                pieces[0] = {"role": "assistant", "content": None, **pieces[0], "refusal": None}
        for sent, piece in enumerate(pieces):
            if fault is not None and sent == cfg.fault_after_tokens:
                if fault is Fault.STALL:
                    await self._stall()
                    return
                if fault is Fault.GARBAGE:
                    yield b'data: {"id": "chatcmpl-garbage", "choices": [{"delta": \n\n'
                    return
                if fault is Fault.DROP:
                    raise _InjectedDrop("fault: drop the stream")
            if sent:
                await asyncio.sleep(1.0 / cfg.tokens_per_second)
            yield delta(piece)
        yield delta({}, "tool_calls" if tools else "stop")
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            prompt = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": len(pieces),
                "total_tokens": prompt + len(pieces),
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            }
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    def _text_pieces(self, text: str) -> list[dict[str, Any]]:
        if self.config.tokens == "subwords":
            return [{"content": piece} for piece in subword_pieces(text)]
        return _text_pieces(text)

    # --- speech --------------------------------------------------------------------------------

    async def _speech(self, request: Request) -> Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await request.json()
        self.speech_requests.append(body)
        fault = self._speech_faults.take(self.config.speech_fault, self.config.speech_fault_count)
        if fault in REJECT_STATUS:
            return _fault_error(REJECT_STATUS[fault])
        if body.get("response_format") != "pcm":
            return _error(400, "The fake only produces pcm.", "invalid_request_error", None)
        text = str(body.get("input", ""))
        speed = float(body.get("speed", 1.0))
        seconds = len(text) * self.config.speech_seconds_per_char / speed
        index = len(self.speech_bytes_sent)
        self.speech_bytes_sent.append(0)
        return StreamingResponse(
            self._pcm(seconds, index, fault), media_type="application/octet-stream"
        )

    async def _pcm(self, seconds: float, index: int, fault: Fault | None) -> AsyncIterator[bytes]:
        cfg = self.config
        if fault is Fault.STALL:
            await self._stall()
            return
        await asyncio.sleep(cfg.speech_first_byte_latency)
        pcm = speech_like_pcm16(seconds, SPEECH_RATE)
        step = cfg.speech_chunk_bytes
        for offset in range(0, len(pcm), step):
            if fault is Fault.DROP and offset:
                raise _InjectedDrop("fault: drop the audio stream")
            piece = pcm[offset : offset + step]
            self.speech_bytes_sent[index] += len(piece)
            yield piece
            await asyncio.sleep(len(piece) / 2 / SPEECH_RATE / cfg.speech_realtime_factor)


class PromptCache:
    """Which prompt prefixes earlier requests began with, as digests at each block boundary."""

    def __init__(self, capacity: int = _CACHE_PREFIXES) -> None:
        self.capacity = capacity
        self._prefixes: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._prefixes)

    def admit(self, body: Mapping[str, Any]) -> int:
        """The tokens of this request's prompt served from the cache; its prefixes are then
        cached for the requests after it."""
        cached = 0
        for tokens, digest in _prefix_digests(body):
            if digest in self._prefixes:
                cached = tokens
            self._prefixes[digest] = None
            self._prefixes.move_to_end(digest)
        while len(self._prefixes) > self.capacity:
            self._prefixes.popitem(last=False)
        return cached


def _prefix_digests(body: Mapping[str, Any]) -> Iterator[tuple[int, bytes]]:
    """(n, digest of the prompt's first n tokens) for every cacheable n: 1024, 1152, …

    The digest covers what makes two prompts the same up to there though the fake does not count
    it as tokens: the model and tools (a cache is per model, and tools lead the prompt) and each
    message's role, tool calls and tool_call_id."""
    messages = body.get("messages") or ()
    if sum(len(str(m.get("content") or "").split()) for m in messages) < CACHE_MIN_TOKENS:
        return  # the usual short prompt: nothing to hash
    digest = hashlib.blake2b(digest_size=16)

    def add(text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)  # length first: no two splits alike

    add(json.dumps([body.get("model"), body.get("tools")], sort_keys=True, default=str))
    tokens = 0
    for message in messages:
        add(json.dumps({k: v for k, v in message.items() if k != "content"}, sort_keys=True))
        for word in str(message.get("content") or "").split():
            add(word)
            tokens += 1
            if tokens >= CACHE_MIN_TOKENS and tokens % CACHE_BLOCK_TOKENS == 0:
                yield tokens, digest.copy().digest()


def _reply_text(reply: Reply) -> str:
    if isinstance(reply, FakeResponse):
        return reply.text
    return reply if isinstance(reply, str) else ""


def _text_pieces(text: str) -> list[dict[str, Any]]:
    # Word-ish tokens with their leading space, as real streams split text.
    words = text.split(" ")
    return [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]


_WHOLE_WORD = 8  # words up to this long (with their leading space) are one token, as in cl100k


def subword_pieces(text: str) -> list[str]:
    """`text` cut as OpenAI's BPE streams it: " the", " order", " appoint"+"ment", ",", "."

    Not the real tokenizer (no vocabulary here), but its shape: ~4 characters per token, a
    leading space glued to the word, punctuation separate, long words in several pieces."""
    pieces: list[str] = []
    for match in re.finditer(r" ?[A-Za-z']+| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+", text):
        token = match.group()
        if len(token) <= _WHOLE_WORD or not token.strip().isalpha():
            pieces.append(token)
            continue
        head = 5 if token.startswith(" ") else 4
        pieces.append(token[:head])
        rest = token[head:]
        while rest:
            take = 4 if len(rest) > 5 else len(rest)
            pieces.append(rest[:take])
            rest = rest[take:]
    return pieces


def _tool_pieces(calls: Sequence[FakeToolCall]) -> list[dict[str, Any]]:
    pieces: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        head = {
            "index": index,
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        pieces.append({"tool_calls": [head]})
        for i in range(0, len(call.arguments), 6):
            fragment = {"index": index, "function": {"arguments": call.arguments[i : i + 6]}}
            pieces.append({"tool_calls": [fragment]})
    return pieces


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if isinstance(reply, FakeResponse):
        message["content"] = reply.text or None
        reply = reply.tool_calls if reply.tool_calls else reply.text
    if isinstance(reply, str):
        message["content"] = reply
        finish = "stop"
    else:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in reply
        ]
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-4o-mini"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _error(status: int, message: str, kind: str, code: str | None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _fault_error(status: int) -> Response:
    if status == 401:
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    if status == 429:
        return _error(429, "Rate limit reached.", "requests", "rate_limit_exceeded")
    return _error(status, "The server had an error.", "server_error", None)

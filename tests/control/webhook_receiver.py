"""A customer's webhook server on 127.0.0.1: records every message, checks its signature, and
answers what the test tells it to (JSON, raw bytes, a status, after a delay)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import vapi.types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from vapi.core.pydantic_utilities import parse_obj_as

from benchmarks.fakes.server import serve
from voice.server_messages import verify_signature

__all__ = ["SECRET", "Answer", "Receiver", "receiver", "sdk_parse"]

SECRET = "customer-webhook-secret"


def sdk_parse(message: dict[str, Any]) -> Any:
    """`message` parsed by Vapi's own SDK model for its type (`vapi-server-sdk`): a field AVA
    names, types or leaves out differently from Vapi raises here."""
    name = "ServerMessage" + "".join(p.title() for p in message["type"].split("-"))
    return parse_obj_as(getattr(vapi.types, name), message)


@dataclass
class Answer:
    body: bytes = b"{}"
    status: int = 200
    delay: float = 0.0

    @classmethod
    def json(cls, data: Any, **kwargs: Any) -> Answer:
        return cls(json.dumps(data).encode(), **kwargs)


@dataclass
class Receiver:
    url: str = ""
    # what to answer a message of a type (default: 200 `{}`)
    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[tuple[dict[str, Any], bool]] = field(default_factory=list)  # (message, signed)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        signed = verify_signature(body, request.headers, SECRET, now=time.time())
        message = json.loads(body)["message"]
        self.received.append((message, signed))
        answer = self.answers.get(message["type"], Answer())
        await asyncio.sleep(answer.delay)
        return Response(answer.body, status_code=answer.status, media_type="application/json")

    def messages(self, kind: str | None = None, call_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m, _ in self.received
            if kind in (None, m["type"]) and call_id in (None, m["call"]["id"])
        ]

    def server(self) -> dict[str, Any]:
        return {"url": self.url, "secret": SECRET, "timeoutSeconds": 2}

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], seconds: float = 10.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(seconds):
            while True:
                for message, _ in self.received:
                    if predicate(message):
                        return message
                await asyncio.sleep(0.01)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    app = Starlette(routes=[Route("/hook", hooks.handle, methods=["POST"])])
    async with serve(app) as base:
        hooks.url = f"{base}/hook"
        yield hooks

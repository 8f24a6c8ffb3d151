"""Logging: one JSON object per line (or readable text), each tagged with the call, the HTTP
request and the tenant it belongs to.

The ids live in context variables. A call's session runs in the task that set its call id, and
every task it starts (its TaskGroup) copies that context, so every line logged during a call
carries the call id without the call loop passing it around. Work handed to a thread pool with
`loop.run_in_executor` does not copy the context (`asyncio.to_thread` does); the inference pool
is a `ContextThreadPool`, which does, so the STT's and TTS's own lines are tagged too.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, ParamSpec, TextIO, TypeVar

from voice.job_pool import BoundedExecutor

__all__ = [
    "CALL_ID",
    "REQUEST_ID",
    "TENANT_ID",
    "ContextFilter",
    "ContextThreadPool",
    "JsonFormatter",
    "bound",
    "configure_logging",
    "resolve_format",
]

CALL_ID: ContextVar[str | None] = ContextVar("ava_call_id", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("ava_request_id", default=None)
TENANT_ID: ContextVar[str | None] = ContextVar("ava_tenant_id", default=None)

_CONTEXT = (("call_id", CALL_ID), ("request_id", REQUEST_ID), ("tenant_id", TENANT_ID))

P = ParamSpec("P")
T = TypeVar("T")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s %(message)s"


@contextmanager
def bound(
    *, call_id: str | None = None, request_id: str | None = None, tenant_id: str | None = None
) -> Iterator[None]:
    """Tag every line logged inside the block (and in tasks started inside it) with these ids;
    the previous values come back when it exits. None leaves an id as it was."""
    tokens = [
        (var, var.set(value))
        for value, var in ((call_id, CALL_ID), (request_id, REQUEST_ID), (tenant_id, TENANT_ID))
        if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextThreadPool(BoundedExecutor):
    """Runs each job in a copy of the submitter's context, as `asyncio.to_thread` does, so lines
    logged by work done for a call (a library's too) carry the call's id. Bounded: a job past
    `max_pending` fails fast (`voice.job_pool.BoundedExecutor`)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        job = functools.partial(fn, *args, **kwargs)
        return super().submit(_run_in, contextvars.copy_context(), job)


def _run_in(context: contextvars.Context, job: Callable[[], T]) -> T:
    return context.run(job)


class ContextFilter(logging.Filter):
    """Copies the context's ids onto each record (on the handler, so records from any logger,
    ours or a library's, get them). Runs in the thread and task that logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        for name, var in _CONTEXT:
            value = var.get()
            setattr(record, name, value)
            if value is not None:
                parts.append(f"{name}={value}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", call_id?, request_id?, tenant_id?, exc?, …}` per line.

    Ids are left out rather than null when unknown. A record's `fields` extra (a dict) is merged
    in, for structured values such as an access log's status and duration.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in _CONTEXT:
            # Set by ContextFilter when it ran; read here too so the formatter works alone.
            value = getattr(record, name, None) or var.get()
            if value is not None:
                entry[name] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def resolve_format(setting: str, stream: TextIO) -> str:
    """`auto` is text on a terminal (a developer) and JSON otherwise (a container, systemd,
    a log shipper): production processes rarely have a terminal."""
    if setting != "auto":
        return setting
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger for everything (ours, uvicorn's — run it with
    `log_config=None` — and libraries'); returns it."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    if resolve_format(fmt, stream) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers propagate to the root once it installs no handlers of its own.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler

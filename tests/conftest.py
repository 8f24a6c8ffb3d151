"""Shared fixtures: a real server on 127.0.0.1, scripted engines, test assistants."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from control.providers import OPERATOR_KEYS, ProviderKeys
from control.server import DrainingServer
from control.settings import Settings
from media.twilio.caller import CallReport
from storage import default_sqlite_url, upgrade
from voice.analysis import (
    STRUCTURED_DATA_MESSAGES,
    SUCCESS_EVALUATION_MESSAGES,
    SUMMARY_MESSAGES,
)
from voice.assistant import Assistant
from voice.greeting import GreetingCache
from voice.session import Engines
from voice.testing import ScriptedLlm, ScriptedStt, ToneTts
from voice.vad import EnergyVad

T = TypeVar("T")

# A failing call test shows its session's events and turn actions (captured, printed on failure):
# timing failures on a loaded machine are otherwise guesswork.
logging.getLogger("ava.call").setLevel(logging.DEBUG)


@asynccontextmanager
async def serve(app: FastAPI, drain_seconds: float = 5.0) -> AsyncIterator[str]:
    """Run `app` under AVA's server on 127.0.0.1 (a free port); yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws_max_size=256 * 1024
    )
    server = DrainingServer(config, app.state.calls, drain_seconds)
    app.state.server = server
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


class ScriptedEngines:
    """An `EngineSource` of scripted engines: no models, deterministic, fast."""

    def __init__(
        self,
        stt_texts: list[str],
        replies: list[str],
        *,
        seconds_per_char: float = 0.05,
        llm_first_token: float = 0.0,
    ) -> None:
        self.stt = ScriptedStt(stt_texts)
        self.llm = ScriptedLlm(replies, first_token=llm_first_token)
        self.tts = ToneTts(seconds_per_char)
        self.greetings = GreetingCache()
        self.closed = False

    def for_assistant(self, assistant: Assistant, keys: ProviderKeys = OPERATOR_KEYS) -> Engines:
        return Engines(
            stt=self.stt,
            llm=self.llm,
            tts=self.tts,
            vad=EnergyVad(),
            turn_detector=None,
            greetings=self.greetings,
        )

    async def warm(self, assistant: Assistant) -> None:
        if assistant.first_message:
            await self.greetings.get_or_synthesize(self.tts, assistant.first_message)

    def close(self) -> None:
        self.closed = True


AssistantFactory = Callable[..., Path]


@pytest.fixture
def assistant_file(tmp_path: Path) -> AssistantFactory:
    """Write an assistant JSON (sample defaults + overrides) and return its path."""

    def make(**overrides: Any) -> Path:
        base = json.loads((Path("control/data/sample-assistant.json")).read_text())
        base.update(overrides)
        path = tmp_path / "assistant.json"
        path.write_text(json.dumps(base))
        return path

    return make


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a private loop in a worker thread: usable from sync helpers called
    inside a running test loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@functools.cache
def _migrated_template() -> Path:
    """A SQLite database migrated to head, once per test process; tests get copies of it."""
    path = Path(tempfile.mkdtemp(prefix="ava-template-")) / "ava.db"
    run_async(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
    return path


def migrated_sqlite(data_dir: Path) -> str:
    """A freshly migrated SQLite database at `data_dir/ava.db` (the default location)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_template(), data_dir / "ava.db")
    return default_sqlite_url(data_dir)


def settings_for(assistant: Path, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for one test: its own migrated SQLite database unless `database_url` is given."""
    if "database_url" not in overrides:
        migrated_sqlite(tmp_path / "var")
    return Settings(
        assistant_file=assistant,
        data_dir=tmp_path / "var",
        secret_key="test-secret-key",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
        **overrides,
    )


def heard_after_barge_in(report: CallReport) -> float:
    """Seconds from the caller's barge-in onset until the assistant's audio stopped playing at
    the phone (the output pauses at the onset; what was queued plays out)."""
    onset = report.barge_in_onset
    assert onset is not None, "no barge-in in the script"
    ends = [
        start + len(audio) / 8000 for start, audio in report.trace.played if start <= onset + 0.5
    ]
    return max(ends, default=onset) - onset


# Tests may read the environment; the application code may not.
# Load shedding guards a production node by its own event loop's lag; four test workers on two
# cores lag every worker's loop past the threshold now and then, and a test's call would be sent
# away. Off for every app and `ava serve` the tests start (they inherit this environment); the
# shedding tests turn it on for their app.
os.environ.setdefault("AVA_SHED_LOOP_LAG_MS", "0")
REDIS_URL = os.environ.get("AVA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def reachable_redis() -> str:
    """The machine's Redis URL once it answers; unreachable: skipped, or failed when CI=true."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        reason = f"Redis at {REDIS_URL} is unreachable: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: redis tests must run)")
        pytest.skip(reason)
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The machine's Redis (mark the test `redis`); unreachable: skipped, or failed when CI=true."""
    yield await reachable_redis()


# Their system prompts up to the first {{variable}} (the rubric, the schema are rendered in).
_ANALYSIS_PROMPTS = tuple(
    messages[0].content.split("{{")[0]
    for messages in (SUMMARY_MESSAGES, STRUCTURED_DATA_MESSAGES, SUCCESS_EVALUATION_MESSAGES)
)


def conversation(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fake LLM's chat requests that belong to the conversation: without the post-call
    analysis (Vapi's default plan asks the call's own model for a summary and a success
    evaluation once the call has ended)."""
    return [
        r
        for r in requests
        if not (
            r.get("messages")
            and str(r["messages"][0].get("content") or "").startswith(_ANALYSIS_PROMPTS)
        )
    ]

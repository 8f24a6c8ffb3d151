"""Shared fixtures: a real server on 127.0.0.1, scripted engines, test assistants."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from control.server import DrainingServer
from control.settings import Settings
from voice.assistant import Assistant
from voice.greeting import GreetingCache
from voice.session import Engines
from voice.testing import ScriptedLlm, ScriptedStt, ToneTts
from voice.vad import EnergyVad


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

    def for_assistant(self, assistant: Assistant) -> Engines:
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


def settings_for(assistant: Path, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        assistant_file=assistant,
        data_dir=tmp_path / "var",
        secret_key="test-secret-key",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
        **overrides,
    )

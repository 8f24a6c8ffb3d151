"""A media stream whose start meets a failing database (PostgreSQL down, or SQLite locked past
its busy timeout under load, as seen at 100 calls on one core): the stream is closed with 1011
and the call is recorded as a server error, never left to an exception in the websocket handler
(which dropped the socket without a close code and the call without a record)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import websockets
from sqlalchemy.exc import OperationalError

from control.app import create_app
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from tests.control.test_twilio_calls import open_stream


async def test_a_database_failure_at_stream_start_closes_1011_with_a_record(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = create_app(settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], []))
    async with serve(app) as base:
        state = app.state.ava

        async def locked(call_id: str, expires: datetime) -> bool:
            raise OperationalError("DELETE FROM stream_tokens_used", {}, Exception("locked"))

        state.stores.calls.use_stream_token = locked
        url, line = await open_stream(base)
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1011
        [record] = state.calls.records.values()
        assert record.ended_reason == "call.in-progress.error-server"
        assert "database unavailable at stream start" in (record.ended_detail or "")
        assert record.metadata.get("call_sid") == line.call_sid
        assert state.calls.live == {}

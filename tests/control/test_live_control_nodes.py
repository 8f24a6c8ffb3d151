"""Live control across nodes (issue 11): two real `ava serve` processes on the machine's
PostgreSQL and Redis, a Twilio caller on node A, `POST /call/{id}/control` through node B.

B finds the call's node in its record and sends the command over Redis; A carries it out on its
session: the `say` is spoken on the call, `end-call` hangs A's session up (the caller's stream
closes). Once A is SIGKILLed, a command for its call gets the clear 504 within the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from benchmarks.server import run_server
from media.twilio.caller import CallReport, CallScript, place_call
from storage import upgrade
from tests.control.test_nodes_e2e import ACCOUNT, AUTH_TOKEN, NUMBER, SECRET, _seed
from tests.storage.conftest import postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

SAID = "A supervisor says hello."
TIMEOUT = 0.8  # AVA_CONTROL_TIMEOUT_SECONDS


async def _live_call(http: httpx.AsyncClient, known: set[str]) -> dict[str, Any]:
    """The next call (not in `known`) once it is in progress; polled over HTTP (another
    process's database rows: there is nothing to await)."""
    async with asyncio.timeout(30):
        while True:
            for call in (await http.get("/call")).json():
                if call["id"] not in known and call["status"] == "in-progress":
                    return dict(call)
            await asyncio.sleep(0.1)


async def _said(http: httpx.AsyncClient, call_id: str, text: str) -> bool:
    call = (await http.get(f"/call/{call_id}")).json()
    return any(m["role"] == "bot" and m["message"] == text for m in call.get("messages", []))


async def test_a_call_on_one_node_is_controlled_through_another(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run_server migrates a scratch database in this process first; two at once would share
    # alembic's process-wide state, so those steps take turns (the servers still load at once).
    migrating = asyncio.Lock()

    async def one_at_a_time(url: str) -> None:
        async with migrating:
            await upgrade(url)

    monkeypatch.setattr("benchmarks.server.upgrade", one_at_a_time)
    twilio = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    with postgres_database() as database:
        key = await _seed(database)
        async with serve(twilio.app) as twilio_base, contextlib.AsyncExitStack() as stack:
            run = uuid.uuid4().hex[:8]

            def node(name: str) -> dict[str, str]:
                return {
                    "AVA_DATABASE_URL": database,
                    "AVA_SECRET_KEY": SECRET,
                    "AVA_REDIS_URL": redis_url,
                    "AVA_NODE_ID": f"{name}-{run}",
                    "AVA_NODE_HEARTBEAT_SECONDS": "1",
                    "AVA_NODE_TTL_SECONDS": "5",
                    "AVA_CONTROL_TIMEOUT_SECONDS": str(TIMEOUT),
                    "AVA_TWILIO_API_BASE_URL": twilio_base,
                    "AVA_DRAIN_SECONDS": "1",
                }

            def started(name: str) -> Any:
                server = run_server(node(name), log=tmp_path / f"{name}.log", ready_timeout=120)
                return stack.enter_async_context(server)

            a, b = await asyncio.gather(started("a"), started("b"))  # model loading overlaps
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=b.base_url, headers={"Authorization": f"Bearer {key}"})
            )

            def call_a() -> asyncio.Task[CallReport]:
                script = CallScript([], max_seconds=60)
                return asyncio.create_task(
                    place_call(
                        a.base_url, script, auth_token=AUTH_TOKEN, to_number=NUMBER,
                        fetch_record=False,
                    )
                )  # fmt: skip

            # --- node A alive: say and end-call through B -----------------------------------
            caller = call_a()
            call = await _live_call(http, set())
            control = f"/call/{call['id']}/control"
            asked = time.monotonic()
            sent = await http.post(control, json={"type": "say", "content": SAID})
            assert sent.status_code == 200, sent.text
            assert time.monotonic() - asked < 1.0  # B → Redis → A → Redis → B
            assert f"sent to call {call['id']}" in sent.json()["message"]
            for _ in range(200):  # spoken on A, recorded once heard
                if await _said(http, call["id"], SAID):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{SAID!r} never recorded on call {call['id']}")
            ended = await http.post(control, json={"type": "end-call"})
            assert ended.status_code == 200, ended.text
            assert ended.json()["endedReason"] == "manually-canceled"
            report = await asyncio.wait_for(caller, 10)  # A's session hung up: stream closed
            assert report.error is None, report.error
            # A's session ended with the API's reason too (what its webhooks report)
            assert "manually-canceled" in (tmp_path / "a.log").read_text()

            # --- node A dead: the clear error, within the deadline ---------------------------
            caller = call_a()
            second = await _live_call(http, {call["id"]})
            os.kill(a.process.pid, signal.SIGKILL)
            await a.process.wait()
            asked = time.monotonic()
            dead = await http.post(
                f"/call/{second['id']}/control", json={"type": "say", "content": SAID}
            )
            elapsed = time.monotonic() - asked
            # end-call needs no owner: the record is ended and Twilio's leg hung up from B
            closed = await http.post(f"/call/{second['id']}/control", json={"type": "end-call"})
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
    assert dead.status_code == 504, dead.text
    message = dead.json()["message"]
    assert f"held by node a-{run}, which is not answering" in message
    assert "heartbeat expires within 5 s" in message
    assert elapsed < 1.0, elapsed
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "ended"
    assert closed.json()["endedReason"] == "manually-canceled"
    sid = closed.json()["phoneCallProviderId"]
    assert any(
        r.path.endswith(f"/Calls/{sid}.json") and r.field("Status") == "completed"
        for r in twilio.requests
    )

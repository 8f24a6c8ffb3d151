"""A server killed with SIGKILL mid-call loses no completed turn, and the next one closes the call.

`ava serve` runs as a real subprocess on a migrated SQLite file with the offline engines; a
simulated Twilio caller (synthesized speech, real time) talks to a tenant's number. As soon as the
API shows a completed turn the process is SIGKILLed (no drain, no flush, no shutdown code), then a
new process is started on the same file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.server import run_server
from control.settings import Settings
from control.stores import open_stores
from media.twilio.caller import CallScript, place_call
from storage import TwilioCredentials, upgrade
from storage.orphans import NODE_DIED_REASON
from voice.engines.synthesize import synthesize_ulaw

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SECRET = "durability-test-secret"
NUMBER = "+14155550142"
AUTH_TOKEN = "durability-auth-token"


@pytest.fixture(scope="module")
def questions() -> list[bytes]:
    return synthesize_ulaw(
        [
            "What are your opening hours?",
            "Where are you located?",
            "Can I book an appointment please?",
        ]
    )


@pytest.fixture(scope="module")
def sample_assistant() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(Path("control/data/sample-assistant.json").read_text())
    return config


async def _seed(data_dir: Path, database: str, sample: dict[str, Any]) -> str:
    """A tenant with an API key (returned), the sample assistant and a number answered by it."""
    await upgrade(database)
    settings = Settings(
        data_dir=data_dir,
        database_url=database,
        secret_key=SECRET,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    stores = await open_stores(settings)
    try:
        tenant = await stores.tenants.create_tenant("Durable")
        key = await stores.tenants.create_api_key(tenant.id)
        assistant = await stores.assistants.create(tenant.id, sample)
        await stores.phone_numbers.create(
            tenant.id,
            number=NUMBER,
            credentials=TwilioCredentials("AC" + "d" * 32, auth_token=AUTH_TOKEN),
            assistant_id=assistant.id,
        )
    finally:
        await stores.close()
    return key.plaintext


def _said(call: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["message"]) for m in call["messages"]]


async def test_sigkill_mid_call_keeps_completed_turns_and_closes_the_call(
    tmp_path: Path, questions: list[bytes], sample_assistant: dict[str, Any]
) -> None:
    data_dir = tmp_path / "var"
    database = f"sqlite+aiosqlite:///{data_dir}/ava.db"
    data_dir.mkdir()
    key = await _seed(data_dir, database, sample_assistant)
    env = {
        "AVA_DATA_DIR": str(data_dir),
        "AVA_DATABASE_URL": database,
        "AVA_SECRET_KEY": SECRET,
        "AVA_DRAIN_SECONDS": "1",
        # The survivor hangs the orphan up through Twilio's REST API: refused here at once, not
        # a DNS lookup for api.twilio.com (1.9 s offline, a real request online).
        "AVA_TWILIO_API_BASE_URL": "http://127.0.0.1:9",
    }
    auth = {"Authorization": f"Bearer {key}"}
    log = tmp_path / "first.log"
    async with run_server(env, log=log, ready_timeout=120) as server:
        script = CallScript(questions, max_seconds=90)
        caller = asyncio.create_task(
            place_call(
                server.base_url,
                script,
                auth_token=AUTH_TOKEN,
                to_number=NUMBER,
                fetch_record=False,
            )
        )
        before: dict[str, Any] | None = None
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth) as http:
            async with asyncio.timeout(90):
                while before is None:
                    await asyncio.sleep(0.05)
                    assert not caller.done(), caller.result()
                    calls = (await http.get("/call")).json()
                    metrics = calls[0]["artifact"]["performanceMetrics"] if calls else {}
                    if metrics.get("turnLatencies"):
                        before = calls[0]
        os.kill(server.process.pid, signal.SIGKILL)
        assert await asyncio.wait_for(server.process.wait(), 10) == -signal.SIGKILL
        report = await asyncio.wait_for(caller, 30)
    assert before["status"] == "in-progress", before
    assert any(role == "user" and "hours" in text.lower() for role, text in _said(before))
    completed_turns = before["artifact"]["performanceMetrics"]["turnLatencies"]

    async with run_server(env, log=tmp_path / "second.log", ready_timeout=120) as server:
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth) as http:
            after = (await http.get(f"/call/{before['id']}")).json()
            listed = (await http.get("/call", params={"status": "in-progress"})).json()
    assert after["status"] == "ended"
    assert after["endedReason"] == NODE_DIED_REASON
    assert "stopped before the call ended" in after["endedMessage"]
    assert listed == []
    # every turn and message the API showed before the kill is still there, in order
    assert _said(after)[: len(_said(before))] == _said(before)
    turns_after = after["artifact"]["performanceMetrics"]["turnLatencies"]
    assert turns_after[: len(completed_turns)] == completed_turns
    assert after["phoneCallProviderId"] == report.call_sid

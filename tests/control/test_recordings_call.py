"""Recorded calls over real sockets (the Twilio protocol, scripted engines): the spool file while
the call runs, the kept file after it, on the local disk and on moto's S3 server."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from control.app import create_app
from control.recordings import sign_recording
from media.twilio.caller import CallScript, place_call
from storage.calls import CallRecord
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def engines() -> ScriptedEngines:
    return ScriptedEngines(
        ["Tell me about your services.", "Stop, what about the price?"],
        [LONG_REPLY, "Cleanings are eighty dollars."],
        seconds_per_char=0.03,
    )


async def closed_recording(app: Any, call_id: str) -> CallRecord:
    """The call once its recording is kept (the route keeps it after the call's socket)."""
    stores = app.state.ava.stores
    for _ in range(100):
        record = await stores.calls.get_call(None, call_id, details=False)
        recording = record.recording if record is not None else None
        if recording is not None and recording.get("store") != "spool":
            return record  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} has no kept recording")


async def ended_call(app: Any, call_id: str) -> CallRecord:
    stores = app.state.ava.stores
    for _ in range(100):
        record = await stores.calls.get_call(None, call_id, details=False)
        if record is not None and record.status == "ended":
            return record  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} never ended in the database")


async def barge_in_call(base: str) -> str:
    report = await place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=1.5))
    assert report.error is None, report.error
    # At most one clear: output pauses at the caller's onset and the words decide; on a loaded
    # machine the words can come after Twilio's ≤200 ms queue has played out, and then nothing
    # is left to clear. That the reply was cut is checked on the recording itself.
    assert report.clears <= 1
    assert report.record is not None
    return str(report.record["id"])


async def short_call(base: str) -> str:
    """One question, the long reply cut by a hang-up."""
    report = await place_call(base, CallScript([SPEECH], hang_up_after=0.5))
    assert report.error is None, report.error
    assert report.record is not None
    return str(report.record["id"])


def channels(body: bytes) -> tuple[float, np.ndarray, np.ndarray]:
    with wave.open(io.BytesIO(body), "rb") as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    return len(frames) / 8000, frames[:, 0], frames[:, 1]


def voiced_seconds(samples: np.ndarray) -> float:
    blocks = samples[: len(samples) // 160 * 160].astype(np.float64).reshape(-1, 160)
    return float((np.sqrt((blocks * blocks).mean(axis=1)) > 100).sum()) * 0.02


async def test_a_phone_call_is_recorded_in_stereo_on_the_local_disk(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    settings = settings_for(assistant_file(), tmp_path)
    app = create_app(settings, engines=engines())
    async with serve(app) as base:
        call_id = await barge_in_call(base)
        record = await closed_recording(app, call_id)
        assert record.recording is not None and record.recording["store"] == "local"
        kept = settings.data_dir / "recordings" / record.recording["key"]
        seconds, caller, assistant = channels(kept.read_bytes())
        assert record.started_at is not None and record.ended_at is not None
        call_seconds = (record.ended_at - record.started_at).total_seconds()
        assert abs(seconds - call_seconds) < 0.3, (seconds, call_seconds)
        assert record.recording["durationSeconds"] == round(seconds, 3)
        assert voiced_seconds(caller) >= 1.5  # both of the caller's 0.8 s utterances
        # The reply cut at ~1.5 s plus the short answer: far less than the long reply's length.
        assert 1.5 < voiced_seconds(assistant) < 0.03 * len(LONG_REPLY)
        assert not (settings.data_dir / "recordings" / "spool" / f"{call_id}.wav").exists()
        token, _ = sign_recording(settings, call_id, None, time.time())
        async with httpx.AsyncClient(base_url=base) as http:
            got = await http.get(f"/call/{call_id}/stereo-recording", params={"token": token})
        assert got.status_code == 200 and got.content == kept.read_bytes()


async def test_recording_disabled_stores_nothing(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    settings = settings_for(assistant_file(artifactPlan={"recordingEnabled": False}), tmp_path)
    app = create_app(settings, engines=engines())
    async with serve(app) as base:
        call_id = await short_call(base)
        record = await ended_call(app, call_id)
        assert record.recording is None
    assert not list((settings.data_dir / "recordings").rglob("*.wav"))


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="calls")
    try:
        yield endpoint
    finally:
        server.stop()


async def test_a_phone_call_is_uploaded_to_s3_after_the_call(
    tmp_path: Path, assistant_file: AssistantFactory, s3_endpoint: str
) -> None:
    settings = settings_for(
        assistant_file(), tmp_path, recording_store="s3", recording_s3_bucket="calls",
        recording_s3_endpoint_url=s3_endpoint, recording_s3_region="us-east-1",
        recording_s3_prefix="ava/",
    )  # fmt: skip
    app = create_app(settings, engines=engines())
    async with serve(app) as base:
        call_id = await short_call(base)
        record = await closed_recording(app, call_id)
        assert record.recording is not None and record.recording["store"] == "s3"
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        body = s3.get_object(Bucket="calls", Key=f"ava/_/{call_id}.wav")["Body"].read()
        seconds, caller, _ = channels(body)
        assert seconds == record.recording["durationSeconds"] and voiced_seconds(caller) >= 0.7
        assert not list((settings.data_dir / "recordings").rglob("*.wav"))  # spool emptied
        token, _ = sign_recording(settings, call_id, None, time.time())
        async with httpx.AsyncClient(base_url=base) as http:
            stereo = await http.get(f"/call/{call_id}/stereo-recording", params={"token": token})
            part = await http.get(
                f"/call/{call_id}/mono-recording",
                params={"token": token},
                headers={"Range": "bytes=44-1043"},
            )
        assert stereo.status_code == 200 and stereo.content == body
        assert part.status_code == 206 and len(part.content) == 1000


async def test_an_mp3_call_is_encoded_after_the_call(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    settings = settings_for(assistant_file(artifactPlan={"recordingFormat": "mp3"}), tmp_path)
    app = create_app(settings, engines=engines())
    async with serve(app) as base:
        call_id = await short_call(base)
        record = await closed_recording(app, call_id)
        while record.recording is not None and record.recording.get("format") != "mp3":
            await asyncio.sleep(0.05)  # the WAV is served from the store until it is encoded
            record = await closed_recording(app, call_id)
    assert record.recording is not None
    root = settings.data_dir / "recordings"
    stereo, mono = root / record.recording["key"], root / record.recording["monoKey"]
    assert stereo.read_bytes()[:2] == mono.read_bytes()[:2] == b"\xff\xe3"  # MPEG-2.5 L III
    assert not list(root.rglob("*.wav"))

"""A full disk or a store that refuses writes: the call goes on and loses nothing; the recording
says why it failed (`calls.recording.error`) and `ava_recording_failures` counts it."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import wave
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import httpx
import numpy as np

from control.metrics import Metrics
from control.recordings import CallRecording
from storage.recordings import LocalStore, Recordings, SpoolOptions
from storage.wav_spool import SpoolWriter
from tests.control.conftest import Api
from tests.voice.sim_kit import _vad, clip, line
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.events import CallEnded, TurnCompleted
from voice.greeting import GreetingCache
from voice.recording import RecordingTransport
from voice.recording_urls import RECORDING_BASE_URL
from voice.session import CallSession, Engines
from voice.simulation import CallerScript, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import FakeClock, RecordingSink, ScriptedLlm, ToneTts

RATE = 8000
ENOSPC = os.strerror(errno.ENOSPC)


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes free: a write past them fails with ENOSPC."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "wb")
        self.room = room

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, ENOSPC)
        return super().write(data)


def full_disk(room: int) -> Callable[[Path], BinaryIO]:
    return lambda path: FullDisk(path, room)


def failures(metrics: Metrics, stage: str) -> float:
    value = metrics.registry.get_sample_value("ava_recording_failures_total", {"stage": stage})
    return value or 0.0


# --- the call goes on -------------------------------------------------------------------------


async def inline(work: Callable[[], None]) -> None:
    work()


def test_a_disk_that_fills_mid_call_stops_the_recording_not_the_call(tmp_path: Path) -> None:
    """The real session in virtual time: the disk fills 1 s into the recording, and both turns
    still happen, the caller hears both answers and the call ends normally."""
    path = tmp_path / "call.wav"
    first, second = "What time do you open?", "And on Sunday?"
    questions = clip(first), clip(second)
    room = 44 + 4 * RATE  # one second of stereo audio

    async def main() -> tuple[SimulatedPhone, RecordingSink, CallEnded, SpoolWriter]:
        loop = asyncio.get_running_loop()
        phone = SimulatedPhone()
        engines = Engines(
            stt=ListeningStt([line(first), line(second)]),
            llm=ScriptedLlm(["We open at nine.", "Sundays we are closed."], first_token=0.2),
            tts=ToneTts(seconds_per_char=0.05, first_byte=0.1),
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        writer = SpoolWriter(path, RATE, flush_seconds=0.2, offload=inline, opener=full_disk(room))
        await writer.open({"callId": "sim"})
        writing = asyncio.create_task(writer.run())
        sink = RecordingSink()
        transport = RecordingTransport(phone, LoopClock(), writer, start=loop.time())
        session = CallSession(
            call_id="sim", assistant=Assistant.model_validate({}), transport=transport,
            engines=engines, sink=sink, clock=LoopClock(),
        )  # fmt: skip
        task = asyncio.create_task(session.run())
        await CallerScript([0.5, questions[0], 3.0, questions[1], 3.0]).run(phone)
        await phone.hang_up()
        ended = await task
        await writer.aclose(writing)
        return phone, sink, ended, writer

    phone, sink, ended, writer = run_virtual(main())
    assert isinstance(writer.failed, OSError) and writer.failed.errno == errno.ENOSPC
    turns = [e for e in sink.events if isinstance(e, TurnCompleted)]
    assert [t.user_text for t in turns] == [first, second]
    assert all(t.assistant_text and not t.interrupted for t in turns)
    assert ended.reason == "customer-ended-call" and ended.at > 6.0
    assert sum(p.end - p.start for p in phone.heard) > 1.5  # both answers were played
    # What was written before the disk filled is a playable file.
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2 and 0 < w.getnframes() <= RATE


# --- the call record and the metric ---------------------------------------------------------


def app_parts(api: Api) -> tuple[Recordings, Metrics]:
    return api.app.state.recordings, api.app.state.metrics


async def recorded_call(
    api: Api, call_id: str, opener: Callable[[Path], BinaryIO], seconds: float = 2.0
) -> CallRecording:
    """A call of tenant A recorded by the app's `Recordings` through `opener`: the assistant
    speaks `seconds` of audio in 20 ms frames, sent as the session sends them."""
    await api.stores.calls.create_call(
        api.tenant_a, type="webCall", call_id=call_id, metadata={RECORDING_BASE_URL: api.base}
    )
    recordings, _ = app_parts(api)
    recordings.options = SpoolOptions(flush_seconds=0.01, opener=opener)
    phone, clock = SimulatedPhone(), FakeClock()
    recording = CallRecording(recordings, call_id, api.tenant_a, phone, clock)
    frame = bytes([0x10]) * 160  # loud µ-law
    async with recording.running():
        for i in range(round(seconds / 0.02)):
            await recording.transport.send_audio(frame)  # never raises, whatever the disk does
            await clock.advance(0.02)  # the frame has played: final for the recording
            if i % 10 == 0:
                await asyncio.sleep(0.02)  # the writer task gets its turns, as in a call
        await recording.transport.close("customer-ended-call")
    return recording


async def test_a_full_disk_is_recorded_on_the_call_and_counted(api: Api) -> None:
    recordings, metrics = app_parts(api)
    before = failures(metrics, "write")
    room = 44 + 4 * RATE // 2  # half a second fits
    recording = await recorded_call(api, "call_full", full_disk(room))
    assert recording.writer.failed is not None
    info = await api.a.get("/call/call_full/recording")
    assert info.status_code == 200
    description = info.json()["description"]
    assert description["state"] == "closed" and description["error"]["stage"] == "write"
    assert ENOSPC in description["error"]["reason"]
    # The audio written before the disk filled is kept and served, its length what is on disk.
    assert 0 < description["durationSeconds"] <= 0.5
    stereo = await api.a.get("/call/call_full/stereo-recording")
    with wave.open(io.BytesIO(stereo.content), "rb") as w:
        assert w.getnframes() == round(description["durationSeconds"] * RATE)
        left_right = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert np.abs(left_right[:, 1]).max() > 1000  # the assistant's audio, up to the error
    assert failures(metrics, "write") == before + 1
    metrics_text = (await api.a.get("/metrics")).text
    assert 'ava_recording_failures_total{stage="write"}' in metrics_text
    assert isinstance(recordings.store, LocalStore)


async def test_a_spool_file_that_cannot_be_created_leaves_a_failed_recording(api: Api) -> None:
    recordings, metrics = app_parts(api)
    before = failures(metrics, "write")

    def no_room(path: Path) -> BinaryIO:
        raise OSError(errno.ENOSPC, ENOSPC, str(path))

    await recorded_call(api, "call_none", no_room, seconds=0.2)
    description = await recordings.db.description("call_none")
    assert description is not None and description["state"] == "failed"
    assert description["error"]["stage"] == "write" and ENOSPC in description["error"]["reason"]
    assert failures(metrics, "write") == before + 1
    assert not list(recordings.spool.root.glob("call_none*"))  # nothing left to recover
    # No audio: no URLs on the call, the downloads are 404 …
    call = (await api.a.get("/call/call_none")).json()
    assert "recordingUrl" not in call.get("artifact", {})
    assert (await api.a.get("/call/call_none/stereo-recording")).status_code == 404
    # … and the note goes with the tenant's retention, as a recording would.
    await recordings.db.set_retention(api.tenant_a, 1)
    assert await recordings.purge(now=datetime.now(UTC) + timedelta(days=2)) == 0
    assert await recordings.db.description("call_none") is None


async def test_a_store_that_refuses_writes_is_counted_and_cleared_once_kept(
    api: Api, tmp_path: Path
) -> None:
    recordings, metrics = app_parts(api)
    before = failures(metrics, "upload")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # keys under a regular file cannot be created: the store refuses
    refusing = Recordings(LocalStore(blocked), recordings.db, tmp_path / "spool")
    refusing.on_failure = recordings.on_failure  # the app's metric
    await api.stores.calls.create_call(api.tenant_a, type="webCall", call_id="call_up")
    writer = refusing.writer("call_up", RATE)
    await writer.open({"callId": "call_up", "tenantId": api.tenant_a})
    writer.write(bytes(4 * RATE))
    await writer.aclose()
    await refusing.closed("call_up", api.tenant_a, writer)  # the local move is refused
    assert failures(metrics, "upload") == before + 1
    assert not await refusing.keep("call_up", api.tenant_a)  # and the next attempt too
    assert failures(metrics, "upload") == before + 2
    description = await recordings.db.description("call_up")
    assert description is not None and description["store"] == "spool"
    assert description["error"]["stage"] == "upload"
    assert (await api.a.get("/call/call_up/recording")).json()["description"]["error"]
    # A later round with a store that takes it: kept, and the error is gone.
    working = Recordings(LocalStore(tmp_path / "kept"), recordings.db, tmp_path / "spool")
    assert await working.recover() == ["call_up"]
    description = await recordings.db.description("call_up")
    assert description is not None and description["store"] == "local"
    assert "error" not in description
    assert (tmp_path / "kept" / description["key"]).stat().st_size == 44 + 4 * RATE


# --- signed URLs on the call itself ------------------------------------------------------------


async def test_the_call_carries_presigned_urls_the_list_does_not(api: Api) -> None:
    await recorded_call(api, "call_signed", full_disk(10**9), seconds=0.4)
    call = (await api.a.get("/call/call_signed")).json()
    artifact = call["artifact"]
    assert artifact["presignedRecordingUrl"].startswith(artifact["recordingUrl"] + "?token=")
    assert artifact["presignedStereoRecordingUrl"].startswith(
        artifact["stereoRecordingUrl"] + "?token="
    )
    expires = datetime.fromisoformat(artifact["presignedUrlsExpiresAt"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    async with httpx.AsyncClient() as anonymous:  # no key: the token is enough
        played = await anonymous.get(artifact["presignedStereoRecordingUrl"])
        assert played.status_code == 200 and played.content[:4] == b"RIFF"
        forged = artifact["presignedRecordingUrl"].replace("call_signed", "call_other")
        assert (await anonymous.get(forged)).status_code in (403, 404)
    listed = (await api.a.get("/call")).json()
    assert listed and all("presignedRecordingUrl" not in c.get("artifact", {}) for c in listed)
    # Another tenant's key does not get them (nor the call).
    assert (await api.b.get("/call/call_signed")).status_code == 404
    # A call without a recording has none.
    await api.stores.calls.create_call(api.tenant_a, type="webCall", call_id="call_plain")
    plain = (await api.a.get("/call/call_plain")).json()
    assert "presignedRecordingUrl" not in plain.get("artifact", {})

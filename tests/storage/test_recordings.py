"""Recordings at rest: the spool writer, surviving a SIGKILL, the stores and the purge."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from media.wav_derive import derived_range, derived_size
from storage.calls import CallStore
from storage.recordings import LocalStore, Recordings, RecordingStore, SpoolOptions
from storage.tables import CallRow, TenantRow
from storage.tenants import TenantStore
from storage.wav_spool import SpoolWriter, is_live, repair

RATE = 8000
SECOND = RATE * 4  # stereo 16-bit


def stereo(seconds: float, left: int = 1000, right: int = -1000) -> bytes:
    n = round(seconds * RATE)
    frames = np.empty((n, 2), dtype="<i2")
    frames[:, 0], frames[:, 1] = left, right
    return frames.tobytes()


def wav_info(path: Path) -> tuple[int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getframerate(), w.getnframes() / w.getframerate()


async def test_the_writer_streams_to_a_playable_wav_and_fixes_the_header_on_close(
    tmp_path: Path,
) -> None:
    writer = SpoolWriter(tmp_path / "c.wav", RATE, flush_seconds=0.01)
    await writer.open({"callId": "c"})
    task = asyncio.create_task(writer.run())
    for _ in range(50):
        writer.write(stereo(0.02))
    await asyncio.sleep(0.05)
    assert writer.data_bytes == SECOND  # written while "the call" runs, not at the end
    writer.write(stereo(0.5))
    await writer.aclose(task)
    assert wav_info(writer.path) == (2, RATE, 1.5)
    assert not is_live(writer.path)


async def test_a_full_buffer_drops_new_audio_and_writes_the_span_as_silence(
    tmp_path: Path,
) -> None:
    writer = SpoolWriter(tmp_path / "c.wav", RATE, max_buffer_seconds=1.0)
    await writer.open({})
    writer.write(stereo(0.8))
    writer.write(stereo(0.5))  # over the 1 s bound (the disk is "stalled": no flush yet)
    writer.write(stereo(0.2, 7, 7))
    assert writer.dropped_bytes == SECOND // 2
    await writer.aclose()
    assert wav_info(writer.path)[2] == 1.5  # the call's length is kept
    with wave.open(str(writer.path), "rb") as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert (frames[: round(0.8 * RATE), 0] == 1000).all()
    assert (frames[round(0.8 * RATE) : round(1.3 * RATE)] == 0).all()
    assert (frames[round(1.3 * RATE) :, 0] == 7).all()


_KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import numpy as np
    from pathlib import Path
    from storage.wav_spool import SpoolWriter

    async def main():
        writer = SpoolWriter(Path(sys.argv[1]), 8000, flush_seconds=0.01, header_every_seconds=60)
        await writer.open({"callId": "killed", "tenantId": "t1"})
        task = asyncio.create_task(writer.run())
        frame = np.full(320, 500, dtype="<i2").tobytes()  # 20 ms of stereo
        for _ in range(150):  # 3 s
            writer.write(frame)
        while writer.data_bytes < 150 * len(frame):
            await asyncio.sleep(0.01)
        writer.write(frame[:3])  # part of a sample frame, as a write cut off mid-way
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


def kill_mid_call(path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], timeout=60)
    assert done.returncode == -signal.SIGKILL


def test_a_sigkilled_writer_leaves_a_file_the_fix_up_makes_playable(tmp_path: Path) -> None:
    path = tmp_path / "killed.wav"
    kill_mid_call(path)
    assert not is_live(path)  # the kernel dropped the dead writer's lock
    rate, channels, data = repair(path)
    assert (rate, channels, data) == (RATE, 2, 3 * SECOND)
    assert wav_info(path) == (2, RATE, 3.0)


async def _call(calls: CallStore, tenant_id: str, call_id: str, age_days: float = 0) -> None:
    await calls.create_call(tenant_id, type="inboundPhoneCall", call_id=call_id)


def recordings_for(sessions: async_sessionmaker[AsyncSession], root: Path) -> Recordings:
    return Recordings(
        LocalStore(root), RecordingStore(sessions), root / "spool", options=SpoolOptions()
    )


async def test_restart_recovers_a_killed_calls_recording_and_marks_it_closed(
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
    calls: CallStore,
    tenants: TenantStore,
) -> None:
    tenant = (await tenants.create_tenant("T")).id
    await _call(calls, tenant, "killed")
    recordings = recordings_for(sessions, tmp_path / "rec")
    spool_file = recordings.spool_path("killed")
    spool_file.parent.mkdir(parents=True)
    kill_mid_call(spool_file)
    # A live recording of this process is left alone.
    live = recordings.writer("live", RATE)
    await live.open({"callId": "live"})
    assert await recordings.recover() == ["killed"]
    record = await calls.get_call(tenant, "killed", details=False)
    assert record is not None and record.recording is not None
    assert record.recording["state"] == "closed"
    assert record.recording["durationSeconds"] == 3.0
    assert record.recording["recovered"] is True
    kept = tmp_path / "rec" / record.recording["key"]
    assert record.recording["key"] == "t1/killed.wav"  # the tenant the writer recorded
    assert wav_info(kept) == (2, RATE, 3.0)
    assert not spool_file.exists()
    assert live.path.exists()
    await live.aclose()


async def test_purge_removes_old_recordings_only_per_tenant_retention(
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
    calls: CallStore,
    tenants: TenantStore,
) -> None:
    short = (await tenants.create_tenant("keeps 2 days")).id
    default = (await tenants.create_tenant("operator default")).id
    recordings = recordings_for(sessions, tmp_path / "rec")
    now = datetime.now(UTC)
    ages = {"short-old": (short, 3), "short-new": (short, 1), "def-old": (default, 20),
            "def-new": (default, 5)}  # fmt: skip
    for call_id, (tenant, age) in ages.items():
        await calls.create_call(tenant, type="webCall", call_id=call_id)
        writer = recordings.writer(call_id, RATE)
        await writer.open({})
        writer.write(stereo(0.1))
        await writer.aclose()
        await recordings.closed(call_id, tenant, writer)
        async with sessions() as session, session.begin():
            await session.execute(
                update(CallRow)
                .where(CallRow.id == call_id)
                .values(created_at=now - timedelta(days=age))
            )
    async with sessions() as session, session.begin():
        await session.execute(
            update(TenantRow).where(TenantRow.id == short).values(recording_retention_days=2)
        )
    assert await recordings.purge(now, default_days=None) == 1  # the operator keeps for ever
    assert await recordings.purge(now, default_days=10) == 1
    for call_id, (tenant, _) in ages.items():
        record = await calls.get_call(tenant, call_id, details=False)
        assert record is not None
        purged = call_id in ("short-old", "def-old")
        assert (record.recording is None) is purged, call_id
        assert (tmp_path / "rec" / f"{tenant}/{call_id}.wav").exists() is not purged


def test_mono_files_are_derived_by_byte_range_from_the_stereo_one() -> None:
    body = np.array([[100, 20], [-5, 7], [30000, 30000], [1, 2]], dtype="<i2").tobytes()
    stereo_file = b"H" * 44 + body

    def read(a: int, b: int) -> list[bytes]:
        return [stereo_file[a:b]]

    size = derived_size(len(stereo_file))
    assert size == 44 + 8
    whole = b"".join(derived_range(read, len(stereo_file), RATE, "mix", 0, size))
    with wave.open(__import__("io").BytesIO(whole), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (1, RATE, 4)
        mixed = np.frombuffer(w.readframes(4), "<i2").tolist()
    assert mixed == [120, 2, 32767, 3]  # summed, clipped
    left = b"".join(derived_range(read, len(stereo_file), RATE, "left", 44, size))
    assert np.frombuffer(left, "<i2").tolist() == [100, -5, 30000, 1]
    # Any byte range, also one that starts and ends inside a sample.
    for a in range(0, size):
        for b in range(a, size + 1):
            part = b"".join(derived_range(read, len(stereo_file), RATE, "mix", a, b))
            assert part == whole[a:b], (a, b)

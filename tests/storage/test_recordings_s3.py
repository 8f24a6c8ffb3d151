"""The S3 store against moto's S3 server on 127.0.0.1: upload after the call, ranged reads,
purge, and a failed upload kept in the spool until a later round keeps it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.calls import CallStore
from storage.recordings import Recordings, RecordingStore
from storage.s3_store import S3Store
from storage.tenants import TenantStore

RATE = 8000


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="recordings"
    )
    try:
        yield endpoint
    finally:
        server.stop()


def s3(endpoint: str) -> S3Store:
    return S3Store(
        "recordings", endpoint_url=endpoint, region="us-east-1", prefix="p/", timeout_seconds=2
    )


async def record(recordings: Recordings, call_id: str, tenant: str) -> bytes:
    writer = recordings.writer(call_id, RATE)
    await writer.open({"callId": call_id, "tenantId": tenant, "format": "wav;l16"})
    pcm = np.arange(2 * RATE, dtype="<i2").tobytes()  # 1 s of stereo
    writer.write(pcm)
    await writer.aclose()
    await recordings.closed(call_id, tenant, writer)
    return pcm


async def test_a_recording_is_uploaded_read_by_range_and_purged(
    tmp_path: Path,
    s3_endpoint: str,
    sessions: async_sessionmaker[AsyncSession],
    calls: CallStore,
    tenants: TenantStore,
) -> None:
    tenant = (await tenants.create_tenant("T")).id
    await calls.create_call(tenant, type="webCall", call_id="c1")
    db = RecordingStore(sessions)
    recordings = Recordings(s3(s3_endpoint), db, tmp_path / "spool")
    pcm = await record(recordings, "c1", tenant)
    spooled = await db.description("c1")
    assert spooled is not None and spooled["store"] == "spool"  # served locally until uploaded
    assert await recordings.keep("c1", tenant)
    kept = await db.description("c1")
    assert kept is not None and kept["store"] == "s3" and kept["key"] == f"{tenant}/c1.wav"
    assert not list((tmp_path / "spool").iterdir())
    source = recordings.source(kept)
    assert source is not None
    store, key = source
    assert store.size(key) == 44 + len(pcm)
    assert b"".join(store.read(key, 44, 144)) == pcm[:100]
    await db.set_retention(tenant, 1)
    assert await recordings.purge(datetime.now(UTC) + timedelta(days=2)) == 1
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert client.list_objects_v2(Bucket="recordings").get("KeyCount") == 0
    assert await db.description("c1") is None


async def test_a_failed_upload_stays_in_the_spool_and_a_later_round_keeps_it(
    tmp_path: Path,
    s3_endpoint: str,
    sessions: async_sessionmaker[AsyncSession],
    calls: CallStore,
    tenants: TenantStore,
) -> None:
    tenant = (await tenants.create_tenant("T")).id
    await calls.create_call(tenant, type="webCall", call_id="c2")
    db = RecordingStore(sessions)
    down = Recordings(s3("http://127.0.0.1:9"), db, tmp_path / "spool")  # nothing listens
    await record(down, "c2", tenant)
    assert not await down.keep("c2", tenant)
    assert (tmp_path / "spool" / "c2.wav").exists()
    up = Recordings(s3(s3_endpoint), db, tmp_path / "spool")
    assert await up.recover() == ["c2"]
    kept = await db.description("c2")
    assert kept is not None and kept["store"] == "s3" and kept.get("recovered") is False
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    body = client.get_object(Bucket="recordings", Key=f"p/{tenant}/c2.wav")["Body"].read()
    assert len(body) == 44 + 4 * RATE

"""Recording downloads: the tenant's API key or a signed URL, Range requests, derived mono."""

from __future__ import annotations

import io
import time
import wave

import httpx
import numpy as np

from control.recordings import sign_recording
from storage.recordings import Recordings
from tests.control.conftest import Api
from voice.recording_urls import RECORDING_BASE_URL

RATE = 8000


async def recorded_call(
    api: Api, call_id: str = "call_rec1", seconds: float = 1.0, fmt: str = "wav;l16"
) -> bytes:
    """A call of tenant A with a kept recording: caller 1000, assistant -2000."""
    await api.stores.calls.create_call(
        api.tenant_a, type="inboundPhoneCall", call_id=call_id,
        metadata={RECORDING_BASE_URL: api.base},
    )  # fmt: skip
    recordings: Recordings = api.app.state.recordings
    writer = recordings.writer(call_id, RATE)
    await writer.open({"callId": call_id, "tenantId": api.tenant_a, "format": fmt})
    frames = np.empty((round(seconds * RATE), 2), dtype="<i2")
    t = np.arange(len(frames)) / RATE
    frames[:, 0] = (1000 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
    frames[:, 1] = -2000
    writer.write(frames.tobytes())
    await writer.aclose()
    await recordings.closed(call_id, api.tenant_a, writer, fmt)
    assert await recordings.keep(call_id, api.tenant_a)
    return frames.tobytes()


def wav(body: bytes) -> tuple[int, int, np.ndarray]:
    with wave.open(io.BytesIO(body), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return w.getnchannels(), w.getframerate(), data


async def test_the_tenant_downloads_its_recording_with_its_key(api: Api) -> None:
    pcm = await recorded_call(api)
    stereo = await api.a.get("/call/call_rec1/stereo-recording")
    assert stereo.status_code == 200
    assert stereo.headers["content-type"] == "audio/wav"
    channels, rate, data = wav(stereo.content)
    assert (channels, rate) == (2, RATE) and data.tobytes() == pcm
    mono = await api.a.get("/call/call_rec1/mono-recording")
    channels, rate, data = wav(mono.content)
    expected = np.frombuffer(pcm, "<i2").reshape(-1, 2).astype(np.int32).sum(axis=1)
    assert channels == 1 and (data == expected).all() and len(data) == RATE
    _, _, customer = wav((await api.a.get("/call/call_rec1/customer-recording")).content)
    _, _, assistant = wav((await api.a.get("/call/call_rec1/assistant-recording")).content)
    assert customer.tobytes() == np.frombuffer(pcm, "<i2")[0::2].tobytes()
    assert (assistant == -2000).all()


async def test_the_call_shows_vapis_recording_urls(api: Api) -> None:
    await recorded_call(api)
    call = (await api.a.get("/call/call_rec1")).json()
    base = f"{api.base}/call/call_rec1"
    assert call["artifact"]["recordingUrl"] == call["recordingUrl"] == f"{base}/mono-recording"
    assert call["artifact"]["stereoRecordingUrl"] == f"{base}/stereo-recording"
    assert call["artifact"]["recording"]["mono"]["customerUrl"] == f"{base}/customer-recording"
    assert RECORDING_BASE_URL not in call.get("metadata", {})
    info = (await api.a.get("/call/call_rec1/recording")).json()
    assert info["description"]["durationSeconds"] == 1.0
    # The presigned URL plays without the key (a browser's <audio src>).
    async with httpx.AsyncClient() as anonymous:
        played = await anonymous.get(info["presignedStereoRecordingUrl"])
    assert played.status_code == 200 and wav(played.content)[0] == 2


async def test_without_a_key_or_token_it_is_401_and_another_tenants_call_is_404(
    api: Api,
) -> None:
    await recorded_call(api)
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        assert (await anonymous.get("/call/call_rec1/stereo-recording")).status_code == 401
        assert (await anonymous.get("/call/call_rec1/recording")).status_code == 401
    assert (await api.b.get("/call/call_rec1/stereo-recording")).status_code == 404
    assert (await api.b.get("/call/call_rec1/mono-recording")).status_code == 404
    assert (await api.b.get("/call/call_rec1/recording")).status_code == 404


async def test_signed_urls_expire_and_are_bound_to_their_call(api: Api) -> None:
    await recorded_call(api)
    await recorded_call(api, "call_rec2")
    settings = api.app.state.ava.settings
    fresh, _ = sign_recording(settings, "call_rec1", api.tenant_a, time.time())
    expired, _ = sign_recording(settings, "call_rec1", api.tenant_a, time.time() - 7200)
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        ok = await anonymous.get("/call/call_rec1/stereo-recording", params={"token": fresh})
        assert ok.status_code == 200
        late = await anonymous.get("/call/call_rec1/stereo-recording", params={"token": expired})
        assert late.status_code == 401
        other = await anonymous.get("/call/call_rec2/stereo-recording", params={"token": fresh})
        assert other.status_code == 403
        forged = await anonymous.get(
            "/call/call_rec1/stereo-recording", params={"token": fresh[:-2] + "xx"}
        )
        assert forged.status_code == 403


async def test_range_requests_serve_the_bytes_asked_for(api: Api) -> None:
    await recorded_call(api)
    whole = (await api.a.get("/call/call_rec1/stereo-recording")).content
    part = await api.a.get("/call/call_rec1/stereo-recording", headers={"Range": "bytes=40-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 40-99/{len(whole)}"
    assert part.content == whole[40:100]
    mono_whole = (await api.a.get("/call/call_rec1/mono-recording")).content
    tail = await api.a.get("/call/call_rec1/mono-recording", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == mono_whole[-5:]
    beyond = await api.a.get("/call/call_rec1/mono-recording", headers={"Range": "bytes=99999-"})
    assert beyond.status_code == 416


async def test_a_call_without_a_recording_is_404(api: Api) -> None:
    await api.stores.calls.create_call(api.tenant_a, type="webCall", call_id="call_plain")
    assert (await api.a.get("/call/call_plain/stereo-recording")).status_code == 404
    assert "recordingUrl" not in (await api.a.get("/call/call_plain")).json()


_BITRATES_V2 = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
_RATES = {0: [11025, 12000, 8000], 2: [22050, 24000, 16000]}  # MPEG 2.5, MPEG 2


def mp3_seconds(body: bytes) -> float:
    """Walk the MPEG-2/2.5 layer III frames of `body` (576 samples each); their duration."""
    offset, samples, rate = 0, 0, 0
    while offset + 4 <= len(body):
        header = int.from_bytes(body[offset : offset + 4], "big")
        assert header >> 21 == 0x7FF, f"lost frame sync at byte {offset}"
        version, layer = (header >> 19) & 3, (header >> 17) & 3
        assert version in _RATES and layer == 1, "not MPEG-2/2.5 layer III"
        kbps = _BITRATES_V2[(header >> 12) & 15]
        rate = _RATES[version][(header >> 10) & 3]
        offset += 72000 * kbps // rate + ((header >> 9) & 1)
        samples += 576
    assert offset == len(body), "a truncated last frame"
    return samples / rate


async def test_an_mp3_recording_keeps_the_stereo_file_and_the_mono_mix(api: Api) -> None:
    await recorded_call(api, "call_mp3", seconds=2.0, fmt="mp3")
    record = await api.stores.calls.get_call(api.tenant_a, "call_mp3", details=False)
    assert record is not None and record.recording is not None
    assert record.recording["format"] == "mp3" and record.recording["durationSeconds"] == 2.0
    stereo = await api.a.get("/call/call_mp3/stereo-recording")
    mono = await api.a.get("/call/call_mp3/mono-recording")
    for response in (stereo, mono):
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/mpeg"
        # Whole frames only, as long as the call (LAME adds up to ~0.2 s of padding).
        assert 2.0 <= mp3_seconds(response.content) <= 2.25
    assert len(mono.content) < len(stereo.content)
    part = await api.a.get("/call/call_mp3/stereo-recording", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == stereo.content[:100]
    assert (await api.a.get("/call/call_mp3/customer-recording")).status_code == 404
    assert not list((api.app.state.recordings.spool.root).glob("call_mp3*"))

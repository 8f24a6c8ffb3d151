"""Call recordings in the control plane: settings to store, each call's recording, downloads.

- `open_recordings(settings, stores)`: the app's `Recordings` for its lifetime. At startup the
  spool files a stopped process left are repaired and kept (after the orphan sweep has closed
  their calls); then recordings past their tenant's retention are purged every
  `AVA_RECORDING_PURGE_INTERVAL_SECONDS`.
- `CallRecording`: one call's recording. `CallRecording.create` (no I/O) wraps the call's
  transport when the assistant's `artifactPlan.recordingEnabled`; `async with recording.running()`
  around the call opens the spool file and runs its writer task, and after the call keeps the
  file in the store (the S3 upload happens there, after the call's slot is free).
- Downloads, Vapi's paths: `GET /call/{id}/stereo-recording | mono-recording |
  customer-recording | assistant-recording`, with the tenant's API key (another tenant's call is
  404) or a signed `?token=` (HMAC-SHA256 under a key derived from the server's secret, bound to
  the call, expiring after `AVA_RECORDING_URL_TTL_SECONDS`; expired: 401, forged or for another
  call: 403). HTTP Range is supported on all four (players seek with it); for `wav;l16` the mono
  files are derived from the stereo one while they are served (`media.wav_derive`); an `mp3`
  recording has the stereo file and the mono mix only (the single channels are 404).
- `GET /call/{id}/recording`: the description and signed URLs (`presigned*Url`,
  `presignedUrlsExpiresAt`) for clients that cannot send the API key to a player (the web
  page's `<audio>`); `GET /dev/call/{id}/recording` the same for the dev scope, in dev mode only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import iterate_in_threadpool

from control.deps import current_tenant
from control.errors import ApiError
from control.listen import ListenHub, listen_hub
from control.metrics import Metrics
from control.settings import Settings
from control.state import AppState
from control.stores import Stores, open_stores
from control.stream_token import InvalidToken, issue_token, verify_token
from control.twilio_auth import external_url
from media.mp3 import wav_to_mp3
from media.transport import CallTransport
from media.wav_derive import Channel, derived_range, derived_size
from storage import CallRecord, make_sessionmaker
from storage.recordings import (
    FORMAT_MP3,
    FORMAT_WAV,
    MAX_RETENTION_DAYS,
    LocalStore,
    ObjectStore,
    Recordings,
    RecordingStore,
    StoreError,
)
from voice.assistant import Assistant
from voice.clock import Clock
from voice.listen_tap import StereoTee
from voice.recording import RecordingTransport
from voice.recording_urls import RECORDING_BASE_URL, recording_artifact

__all__ = [
    "CallRecording",
    "add_presigned_urls",
    "add_recording_commands",
    "build_recordings",
    "open_recordings",
    "run_recording_command",
    "recording_base_url",
    "router",
    "sign_recording",
]

log = logging.getLogger("ava.recordings")
router = APIRouter(tags=["recordings"])

# Download path → the channel derived from the stereo file (None: the stereo file itself).
KINDS: dict[str, Channel | None] = {
    "stereo-recording": None,
    "mono-recording": "mix",
    "customer-recording": "left",
    "assistant-recording": "right",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def build_recordings(
    settings: Settings, stores: Stores, metrics: Metrics | None = None
) -> Recordings:
    root = settings.data_dir / "recordings"
    store: ObjectStore
    if settings.recording_store == "s3":
        from storage.s3_store import S3Store  # boto3 is imported only when it is used

        store = S3Store(
            settings.recording_s3_bucket,
            endpoint_url=settings.recording_s3_endpoint_url or None,
            region=settings.recording_s3_region or None,
            access_key_id=settings.recording_s3_access_key_id or None,
            secret_access_key=settings.recording_s3_secret_access_key.get_secret_value() or None,
            prefix=settings.recording_s3_prefix,
        )
    else:
        store = LocalStore(root)
    db = RecordingStore(make_sessionmaker(stores.engine))
    recordings = Recordings(store, db, root / "spool", to_mp3=wav_to_mp3)
    if metrics is not None:
        recordings.on_failure = metrics.recording_failure
    return recordings


@asynccontextmanager
async def open_recordings(
    settings: Settings, stores: Stores, metrics: Metrics | None = None
) -> AsyncIterator[Recordings]:
    """The app's recordings: spool recovered at startup, purged periodically until exit.
    Failures (a full disk, a refused upload) are counted in `metrics`."""
    recordings = build_recordings(settings, stores, metrics)
    try:
        recovered = await recordings.recover()
        if recovered:
            log.warning("kept %d recordings a stopped process left", len(recovered))
    except (SQLAlchemyError, OSError) as exc:
        log.error("recovering spooled recordings failed: %s", exc)
    task = asyncio.create_task(_purging(recordings, settings), name="ava-recording-purge")
    try:
        yield recordings
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _purging(recordings: Recordings, settings: Settings) -> None:
    """Each round: recordings past retention deleted, then spool files left by failed uploads
    (or by another process on this data directory that stopped) kept."""
    first = True
    while True:
        try:
            await recordings.purge(default_days=settings.recording_retention_days)
            if not first:  # the startup recovery has just run
                await recordings.recover()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("recording purge failed, retried next round: %s", exc)
        first = False
        await asyncio.sleep(settings.recording_purge_interval_seconds)


def recording_base_url(state: AppState, headers: Any, scheme: str) -> str:
    """The HTTP base URL downloads are under (a websocket's scheme maps to its HTTP one)."""
    http = {"wss": "https", "ws": "http"}.get(scheme, scheme)
    return external_url(state, headers, http, "/", False).rstrip("/")


# --- one call's recording ----------------------------------------------------------------------


class CallRecording:
    def __init__(
        self,
        recordings: Recordings,
        call_id: str,
        tenant_id: str | None,
        transport: CallTransport,
        clock: Clock,
        fmt: str = FORMAT_WAV,
        listen: ListenHub | None = None,
    ) -> None:
        self.recordings = recordings
        self.call_id = call_id
        self.tenant_id = tenant_id
        self.format = fmt
        rate = transport.audio_format.sample_rate
        self.writer = recordings.writer(call_id, rate)
        # The live listeners (control/listen.py) hear the same stereo stream as the file.
        self.listen = listen
        self.tap = None if listen is None else listen.tap(call_id, tenant_id, rate)
        sink = self.writer if self.tap is None else StereoTee(self.writer, self.tap)
        self.transport = RecordingTransport(transport, clock, sink, on_close=self._close)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def create(
        cls,
        recordings: Recordings | None,
        *,
        call_id: str,
        tenant_id: str | None,
        assistant: Assistant,
        transport: CallTransport,
        clock: Clock,
        base_url: str,
        metadata: dict[str, str],
    ) -> CallRecording | None:
        """A recording of the call if its assistant wants one; puts the download base URL in
        the call's `metadata` (for the end-of-call report). No I/O: `running()` starts it.
        Not recorded, the call is still tapped for live listeners (`ListenOnly`)."""
        listen = listen_hub(recordings)
        if recordings is None or not assistant.artifact_plan.recording_enabled:
            if listen is None:
                return None
            return ListenOnly(listen, call_id, tenant_id, transport, clock)
        metadata[RECORDING_BASE_URL] = base_url
        fmt = assistant.artifact_plan.recording_format
        return cls(recordings, call_id, tenant_id, transport, clock, fmt, listen)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        with self._listened():
            async with self._recorded():
                yield

    @contextlib.contextmanager
    def _listened(self) -> Iterator[None]:
        if self.listen is None or self.tap is None:
            yield
            return
        with self.listen.serving(self.tap):
            yield

    @asynccontextmanager
    async def _recorded(self) -> AsyncIterator[None]:
        meta = {
            "callId": self.call_id,
            "tenantId": self.tenant_id,
            "format": self.format,
            "startedAt": time.time(),
        }
        try:
            await self.writer.open(meta)
        except OSError as exc:
            log.error("call %s: not recorded, the spool file failed: %s", self.call_id, exc)
            self._closed = True
            try:
                await self.recordings.not_opened(self.call_id, exc)
            except (SQLAlchemyError, OSError) as failed:
                log.error("call %s: noting the failure failed: %s", self.call_id, failed)
            yield
            return
        self._task = asyncio.create_task(self.writer.run(), name=f"recording-{self.call_id}")
        try:
            yield
        finally:
            self.transport.finish()  # the session closes it; this is for one that did not
            await self._close()
            try:
                await self.recordings.keep(self.call_id, self.tenant_id)
            except SQLAlchemyError as exc:
                log.error("call %s: describing its kept recording failed: %s", self.call_id, exc)

    async def _close(self) -> None:
        if self.listen is not None and self.tap is not None:
            self.listen.end(self.tap)  # the line closed: listeners hear the end now
        if self._closed:
            return
        self._closed = True
        await self.writer.aclose(self._task)
        if self.writer.failed is not None:
            log.error("call %s: recording cut short: %s", self.call_id, self.writer.failed)
        if self.writer.dropped_bytes:
            log.warning(
                "call %s: %.1f s of recording dropped (disk too slow), written as silence",
                self.call_id,
                self.writer.dropped_bytes / self.writer.bytes_per_second,
            )
        try:
            await self.recordings.closed(self.call_id, self.tenant_id, self.writer, self.format)
        except SQLAlchemyError as exc:
            log.error("call %s: describing its recording failed: %s", self.call_id, exc)


class ListenOnly(CallRecording):
    """A call that is not recorded but can be listened to: the same tap, no spool file."""

    def __init__(
        self,
        listen: ListenHub,
        call_id: str,
        tenant_id: str | None,
        transport: CallTransport,
        clock: Clock,
    ) -> None:
        self.call_id = call_id
        self.tenant_id = tenant_id
        self.listen = listen
        tap = listen.tap(call_id, tenant_id, transport.audio_format.sample_rate)
        self.tap = tap
        # Stereo audio is made only while someone listens (`ListenTap.wanted`).
        self.transport = RecordingTransport(
            transport, clock, tap, on_close=self._close, wanted=tap.wanted
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        with self._listened():
            try:
                yield
            finally:
                self.transport.finish()

    async def _close(self) -> None:
        if self.listen is not None and self.tap is not None:
            self.listen.end(self.tap)  # the line closed: listeners hear the end now


# --- signed URLs ---------------------------------------------------------------------------------


def _key(settings: Settings) -> bytes:
    # Its own key, derived from the stream-token key: a recording token is never a valid
    # stream or web-call token, nor the other way round.
    return hmac.new(settings.signing_key(), b"ava recording url", hashlib.sha256).digest()


def sign_recording(
    settings: Settings, call_id: str, tenant_id: str | None, now: float
) -> tuple[str, float]:
    """A token for the call's recording downloads, and when it expires (epoch seconds)."""
    ttl = settings.recording_url_ttl_seconds
    token = issue_token(_key(settings), {"c": call_id, "t": tenant_id or ""}, now=now, ttl=ttl)
    return token, float(int(now + ttl))


def add_presigned_urls(
    settings: Settings, call: dict[str, Any], tenant_id: str | None, now: float
) -> None:
    """Vapi's `artifact.presignedRecordingUrl`, `presignedStereoRecordingUrl` and
    `presignedUrlsExpiresAt` on a call (the JSON of `GET /call/{id}`) that shows recording URLs:
    the same URLs with a signed `?token=`, playable without the key until they expire. One call
    at a time (`GET /call` lists without them: each is signed when it is read)."""
    artifact = call.get("artifact")
    if not isinstance(artifact, dict) or not isinstance(artifact.get("recordingUrl"), str):
        return
    token, expires = sign_recording(settings, str(call["id"]), tenant_id, now)
    artifact["presignedRecordingUrl"] = f"{artifact['recordingUrl']}?token={token}"
    artifact["presignedStereoRecordingUrl"] = f"{artifact['stereoRecordingUrl']}?token={token}"
    artifact["presignedUrlsExpiresAt"] = datetime.fromtimestamp(expires, UTC).isoformat()


def _token_tenant(settings: Settings, token: str, call_id: str) -> str | None:
    """The tenant a valid token for `call_id` names (None: the dev scope); 401/403 else."""
    try:
        claims = verify_token(_key(settings), token, now=time.time())
    except InvalidToken as exc:
        if "expired" in str(exc):
            raise ApiError(401, "the signed recording URL has expired") from exc
        raise ApiError(403, "invalid recording URL signature") from exc
    if claims.get("c") != call_id:
        raise ApiError(403, "the signed URL is for another call")
    tenant = claims.get("t")
    return tenant if isinstance(tenant, str) and tenant else None


# --- routes --------------------------------------------------------------------------------------


async def _authorized(request: Request, call_id: str, token: str | None) -> tuple[str | None, Any]:
    state: AppState = request.app.state.ava
    if token:
        tenant_id = _token_tenant(state.settings, token, call_id)
    else:
        tenant_id = await current_tenant(request, state.stores)
    record = await state.stores.calls.get_call(tenant_id, call_id, details=False)
    if record is None:
        raise ApiError(404, "call not found")
    return tenant_id, record


def _recordings(request: Request) -> Recordings:
    recordings: Recordings | None = getattr(request.app.state, "recordings", None)
    if recordings is None:
        raise ApiError(404, "recordings are not available on this server")
    return recordings


@router.get("/call/{call_id}/recording")
async def recording_info(call_id: str, request: Request) -> dict[str, Any]:
    """The call's recording: its description, stable URLs and signed (presigned*) URLs."""
    state: AppState = request.app.state.ava
    tenant_id = await current_tenant(request, state.stores)
    record = await state.stores.calls.get_call(tenant_id, call_id, details=False)
    if record is None:
        raise ApiError(404, "call not found")
    return _signed_info(state, request, record, tenant_id)


@router.get("/dev/call/{call_id}/recording")
async def dev_recording_info(call_id: str, request: Request) -> dict[str, Any]:
    """`GET /call/{id}/recording` for the dev scope's calls (made without a tenant), so the page
    plays them without a key: dev mode only, as `GET /dev/call` is; a tenant's call is 404."""
    state: AppState = request.app.state.ava
    if not state.settings.dev_mode:
        raise ApiError(404, "not found (dev mode only: use GET /call/{id}/recording with a key)")
    record = await state.stores.calls.get_call(None, call_id, details=False)
    if record is None:
        raise ApiError(404, "call not found")
    return _signed_info(state, request, record, None)


def _signed_info(
    state: AppState, request: Request, record: CallRecord, tenant_id: str | None
) -> dict[str, Any]:
    call_id = record.id
    description = record.recording
    if not isinstance(description, dict) or description.get("state") != "closed":
        raise ApiError(404, "the call has no recording (yet)")
    base = recording_base_url(state, request.headers, request.url.scheme)
    token, expires = sign_recording(state.settings, call_id, tenant_id, time.time())
    urls = recording_artifact(base, call_id)
    presigned = {
        "presignedRecordingUrl": f"{urls['recordingUrl']}?token={token}",
        "presignedStereoRecordingUrl": f"{urls['stereoRecordingUrl']}?token={token}",
        "presignedUrlsExpiresAt": datetime.fromtimestamp(expires, UTC).isoformat(),
    }
    return {"description": description, **urls, **presigned}


def _download(kind: str, channel: Channel | None) -> Callable[..., Any]:
    async def download(
        call_id: str, request: Request, token: str | None = Query(default=None, max_length=1024)
    ) -> Response:
        recordings = _recordings(request)
        _, record = await _authorized(request, call_id, token)
        description = record.recording
        source = recordings.source(description) if isinstance(description, dict) else None
        if source is None or description is None:
            raise ApiError(404, "the call has no recording (yet)")
        store, key = source
        if description.get("format") == FORMAT_MP3:
            return await _mp3(request, store, description, kind, channel)
        try:
            stereo_size = await asyncio.to_thread(store.size, key)
        except StoreError as exc:
            raise ApiError(404, "the recording is not in its store") from exc
        rate = int(description.get("sampleRate", 8000))

        def read(start: int, end: int) -> Iterator[bytes]:
            return store.read(key, start, end)

        if channel is None:
            size, reader = stereo_size, read
        else:

            def reader(start: int, end: int) -> Iterator[bytes]:
                return derived_range(read, stereo_size, rate, channel, start, end)

            size = derived_size(stereo_size)
        return _ranged(request, size, reader, f"{call_id}-{kind}.wav", "audio/wav")

    download.__name__ = f"download_{kind.replace('-', '_')}"
    return download


for _kind, _channel in KINDS.items():
    router.add_api_route(
        f"/call/{{call_id}}/{_kind}", _download(_kind, _channel), methods=["GET"],
        response_class=Response, summary=f"Download the call's {_kind.replace('-', ' ')} (WAV)",
    )  # fmt: skip


async def _mp3(
    request: Request,
    store: ObjectStore,
    description: dict[str, Any],
    kind: str,
    channel: Channel | None,
) -> Response:
    """An mp3 recording: the stereo file and the mono mix are stored; no single channels."""
    key = description.get("key") if channel is None else description.get("monoKey")
    if channel not in (None, "mix") or not isinstance(key, str):
        raise ApiError(404, f"no {kind} for an mp3 recording (wav;l16 keeps each channel)")
    try:
        size = await asyncio.to_thread(store.size, key)
    except StoreError as exc:
        raise ApiError(404, "the recording is not in its store") from exc

    def read(start: int, end: int) -> Iterator[bytes]:
        return store.read(key, start, end)

    call_id = request.path_params.get("call_id", "call")
    return _ranged(request, size, read, f"{call_id}-{kind}.mp3", "audio/mpeg")


def _ranged(
    request: Request,
    size: int,
    read: Callable[[int, int], Iterator[bytes]],
    filename: str,
    media_type: str,
) -> Response:
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    start, end, status = 0, size, 200
    match = _RANGE.fullmatch(request.headers.get("range", "").strip())
    if match is not None and (match.group(1) or match.group(2)):
        first, last = match.group(1), match.group(2)
        if first:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
        else:
            start = max(0, size - int(last))
        if start >= size or end <= start:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(status_code=416, headers=headers)
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    body = iterate_in_threadpool(read(start, end))
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


# --- `ava recordings …` ---------------------------------------------------------------------


def add_recording_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recordings = sub.add_parser("recordings", help="call recordings").add_subparsers(
        dest="action", required=True
    )
    recordings.add_parser(
        "purge", help="delete recordings past their retention now (the server does it hourly)"
    )
    retention = recordings.add_parser(
        "retention",
        help="set a tenant's recording retention (default: AVA_RECORDING_RETENTION_DAYS)",
    )
    retention.add_argument("tenant", help="tenant id")
    retention.add_argument("days", help="days to keep recordings (1 or more), or 'default'")


async def run_recording_command(settings: Settings, args: argparse.Namespace) -> int:
    """Output: the number purged on stdout; diagnostics on stderr."""
    stores = await open_stores(settings)
    try:
        recordings = build_recordings(settings, stores)
        if args.action == "purge":
            purged = await recordings.purge(default_days=settings.recording_retention_days)
            print(purged)  # noqa: T201 - CLI output
            return 0
        days: int | None = None
        if args.days != "default":
            days = int(args.days) if args.days.isdigit() else 0
            if not 1 <= days <= MAX_RETENTION_DAYS:
                print(  # noqa: T201
                    f"days: 1 to {MAX_RETENTION_DAYS}, or 'default', not {args.days!r}",
                    file=sys.stderr,
                )
                return 2
        if not await recordings.db.set_retention(args.tenant, days):
            print(f"no tenant {args.tenant}", file=sys.stderr)  # noqa: T201
            return 1
        return 0
    finally:
        await stores.close()

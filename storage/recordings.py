"""Call recordings at rest: where the files go, what `calls.recording` says, and their purge.

A recording is written to a spool file under the data directory while the call runs
(`storage.wav_spool`), then kept in a store: the local filesystem (`LocalStore`, the default) or
an S3-compatible bucket (`storage.s3_store.S3Store`). `calls.recording` describes it:

    {"state": "closed", "store": "local" | "s3" | "spool", "key": ..., "format": "wav;l16"|"mp3",
     "channels": 2, "sampleRate": ..., "bytes": ..., "durationSeconds": ...,
     "droppedSeconds": ..., "closedAt": ..., "recovered": true?}

(`"spool"`: closed, not yet in its store; served from the spool file meanwhile). URLs are never
stored: they are derived when the call is read. A purged recording's description is removed
(SQL NULL), so the call shows no recording URLs any more.

Failures never touch the call; they are recorded on the description as `"error": {"stage",
"reason", "at"}` and counted through `on_failure(stage)` (the control plane's metric):
- `"write"`: the spool file failed (a full disk). Failing to create it leaves
  `{"state": "failed", "error": …}` (no audio); failing mid-call keeps the audio written before
  the error, `"state": "closed"` with the error (playable, purged like any other).
- `"upload"`: keeping the closed file in its store failed (an object store that refuses writes,
  the MP3 encoding, a full disk under the local store). It stays in the spool, served from
  there, and every purge round tries again; the error is cleared once it is kept.

For `wav;l16` only the stereo file is kept: the mono mix and the single channels are derived
from it when they are downloaded (`media.wav_derive`: one ranged read, a numpy sum), which saves
half the storage and keeps one file to upload, purge and recover. For `mp3` the spool WAV is
encoded after the call (`keep`) into a stereo MP3 and the mono mix (`monoKey`): compressed audio
cannot be remixed by byte range, and single channels are not kept.

Store operations are blocking (file system, boto3) and run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sqlalchemy import ColumnElement, null, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.tables import CallRow, TenantRow, utcnow
from storage.wav_spool import HEADER_BYTES, SpoolWriter, read_sidecar, repair, sidecar, try_lock

__all__ = [
    "FORMAT_MP3",
    "FORMAT_WAV",
    "MAX_RETENTION_DAYS",
    "LocalStore",
    "ObjectStore",
    "RecordingStore",
    "Recordings",
    "StoreError",
]

log = logging.getLogger("ava.recordings")

FORMAT_WAV = "wav;l16"
FORMAT_MP3 = "mp3"
_CHUNK = 64 * 1024
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# A century: more is "for ever", which is no retention (None); and `now - days` must not overflow.
MAX_RETENTION_DAYS = 36_500
_PURGED = ("closed", "failed")  # the states `expired` hands the purge


class StoreError(Exception):
    """A store could not keep, find or delete a recording (the provider's error is chained)."""


class ObjectStore(Protocol):
    name: str

    def put(self, source: Path, key: str) -> None: ...

    def size(self, key: str) -> int:
        """Bytes in the object; raises StoreError when it does not exist."""
        ...

    def read(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the object, in chunks."""
        ...

    def delete(self, key: str) -> None: ...


class LocalStore:
    """Files under `root`; keys are relative paths made by this module (never a tenant's)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, source: Path, key: str) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)  # same file system: instant
            except OSError:
                shutil.copyfile(source, target)
                source.unlink()
        except OSError as exc:
            raise StoreError(f"keeping recording {key} failed: {exc}") from exc

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except OSError as exc:
            raise StoreError(f"recording {key} not found") from exc

    def read(self, key: str, start: int, end: int) -> Iterator[bytes]:
        try:
            with self.path(key).open("rb") as f:
                f.seek(start)
                left = end - start
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        return
                    left -= len(chunk)
                    yield chunk
        except OSError as exc:
            raise StoreError(f"reading recording {key} failed") from exc

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"deleting recording {key} failed: {exc}") from exc


class RecordingStore:
    """`calls.recording` and the tenants' retention, in the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def describe(self, call_id: str, description: dict[str, Any]) -> bool:
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(CallRow).where(CallRow.id == call_id).values(recording=description)
            )
        return bool(getattr(result, "rowcount", 0))

    async def forget(self, call_id: str) -> None:
        """The recording is gone: SQL NULL (not JSON null), so no later purge looks at it."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(CallRow).where(CallRow.id == call_id).values(recording=null())
            )

    async def description(self, call_id: str) -> dict[str, Any] | None:
        async with self._sessions() as session:
            value = await session.scalar(select(CallRow.recording).where(CallRow.id == call_id))
        return dict(value) if isinstance(value, dict) else None

    async def retention(self, tenant_id: str) -> int | None:
        """The tenant's own retention in days; None: the operator's default applies."""
        async with self._sessions() as session:
            days: int | None = await session.scalar(
                select(TenantRow.recording_retention_days).where(TenantRow.id == tenant_id)
            )
        return days

    async def set_retention(self, tenant_id: str, days: int | None) -> bool:
        """A tenant's retention in days (None: the operator's default); False: no such tenant."""
        if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
            raise ValueError(f"retention is 1 to {MAX_RETENTION_DAYS} days, not {days}")
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(TenantRow)
                .where(TenantRow.id == tenant_id)
                .values(recording_retention_days=days)
            )
        return bool(getattr(result, "rowcount", 0))

    async def expired(
        self, now: datetime, default_days: int | None, limit: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` calls whose kept recording is older than their tenant's retention (the
        tenant's own days, else `default_days`; neither: kept for ever). Age counts from the
        call's creation. One query per distinct retention, filtered by age in the database."""
        async with self._sessions() as session:
            tenants = (
                await session.execute(select(TenantRow.id, TenantRow.recording_retention_days))
            ).all()
            groups: dict[int, list[str]] = {}
            defaulted: list[str] = []
            for tenant_id, days in tenants:
                if days is None:
                    defaulted.append(tenant_id)
                else:
                    groups.setdefault(days, []).append(tenant_id)
            out: list[tuple[str, dict[str, Any]]] = []
            scopes: list[tuple[int, ColumnElement[bool]]] = [
                (days, CallRow.tenant_id.in_(ids)) for days, ids in groups.items()
            ]
            if default_days:
                scopes.append(
                    (default_days, CallRow.tenant_id.in_(defaulted) | CallRow.tenant_id.is_(None))
                )
            for days, scope in scopes:
                rows = await session.execute(
                    select(CallRow.id, CallRow.recording)
                    .where(
                        scope,
                        CallRow.recording.is_not(None),
                        CallRow.created_at < now - timedelta(days=days),
                    )
                    .order_by(CallRow.created_at)
                    .limit(limit - len(out))
                )
                for call_id, recording in rows:
                    # "failed": no audio, only its error, which goes after the same retention
                    if isinstance(recording, dict) and recording.get("state") in _PURGED:
                        out.append((call_id, recording))
                if len(out) >= limit:
                    break
        return out


@dataclass(frozen=True, slots=True)
class SpoolOptions:
    flush_seconds: float = 0.5
    header_every_seconds: float = 2.0
    max_buffer_seconds: float = 10.0
    # Opens a spool file for writing (None: `path.open("wb")`): the seam tests fail writes with.
    opener: Callable[[Path], BinaryIO] | None = None


class Recordings:
    """The spool, the store and the descriptions together: what the control plane uses."""

    def __init__(
        self,
        store: ObjectStore,
        db: RecordingStore,
        spool_dir: Path,
        *,
        options: SpoolOptions | None = None,
        to_mp3: Callable[[Path, Path, Path], None] | None = None,
    ) -> None:
        """`to_mp3(wav, stereo_mp3, mono_mp3)` encodes `mp3` recordings (blocking)."""
        self._to_mp3 = to_mp3
        self.store = store
        self.db = db
        self.spool = LocalStore(spool_dir)
        self.options = options or SpoolOptions()
        # Called with the stage ("write" | "upload") of every failure (the app's metric).
        self.on_failure: Callable[[str], None] | None = None

    def _stores(self) -> dict[str, ObjectStore]:
        return {self.store.name: self.store, "spool": self.spool}

    def spool_path(self, call_id: str) -> Path:
        if not _SAFE_ID.fullmatch(call_id):
            raise ValueError(f"not a call id: {call_id!r}")
        return self.spool.path(f"{call_id}.wav")

    def writer(self, call_id: str, sample_rate: int) -> SpoolWriter:
        o = self.options
        return SpoolWriter(
            self.spool_path(call_id), sample_rate, flush_seconds=o.flush_seconds,
            header_every_seconds=o.header_every_seconds, max_buffer_seconds=o.max_buffer_seconds,
            opener=o.opener,
        )  # fmt: skip

    @staticmethod
    def key(tenant_id: str | None, call_id: str) -> str:
        return f"{tenant_id or '_'}/{call_id}.wav"

    async def closed(
        self, call_id: str, tenant_id: str | None, writer: SpoolWriter, fmt: str = FORMAT_WAV
    ) -> None:
        """The call is over and `writer` closed: describe it, and move a WAV into a local store
        at once (an S3 upload, or an MP3 encoding, waits for `keep`, after the call)."""
        data_bytes = writer.data_bytes
        error: dict[str, Any] | None = None
        if writer.failed is not None:
            error = self._failure(call_id, "write", writer.failed)
            # What reached the disk, not what was handed to it: the header from the file's size.
            with contextlib.suppress(OSError, ValueError):
                data_bytes = (await asyncio.to_thread(repair, writer.path))[2]
        description = _description(
            "spool", f"{call_id}.wav", writer.sample_rate, writer.channels, data_bytes,
            dropped_bytes=writer.dropped_bytes,
        )  # fmt: skip
        if error is not None:
            description["error"] = error
        if isinstance(self.store, LocalStore) and fmt == FORMAT_WAV:
            key = self.key(tenant_id, call_id)
            try:
                await asyncio.to_thread(self._move_local, writer.path, key)
                description |= {"store": self.store.name, "key": key}
            except StoreError as exc:
                log.error("call %s: recording stays in the spool: %s", call_id, exc)
                description.setdefault("error", self._failure(call_id, "upload", exc))
        await self._describe(call_id, description)

    async def not_opened(self, call_id: str, error: OSError) -> None:
        """The spool file could not be created: the call goes on unrecorded, which its
        description says (`"state": "failed"`)."""
        failure = self._failure(call_id, "write", error)
        await asyncio.to_thread(self._drop_unopened, self.spool_path(call_id))
        await self._describe(call_id, {"state": "failed", "error": failure})

    @staticmethod
    def _drop_unopened(path: Path) -> None:
        """What a failed open left (an empty file, a sidecar), unless someone holds it."""
        lock = try_lock(path)
        if lock is None:
            if not path.exists():  # only the sidecar was written
                with contextlib.suppress(OSError):
                    sidecar(path).unlink(missing_ok=True)
            return
        with lock, contextlib.suppress(OSError):
            _remove_spool(path)

    def _failure(self, call_id: str, stage: str, error: BaseException) -> dict[str, Any]:
        """Log and count a failure; its entry for the description."""
        log.error("call %s: recording %s failed: %s", call_id, stage, error)
        if self.on_failure is not None:
            self.on_failure(stage)
        return {"stage": stage, "reason": str(error) or type(error).__name__, "at": _iso(utcnow())}

    def _move_local(self, spool_file: Path, key: str) -> None:
        lock = try_lock(spool_file)
        if lock is None:
            raise StoreError(f"{spool_file} is held by another keeper")
        with lock:
            self.store.put(spool_file, key)
            sidecar(spool_file).unlink(missing_ok=True)

    async def keep(self, call_id: str, tenant_id: str | None) -> bool:
        """Put a closed call's spool file in the store (encoded first for `mp3`, the format its
        sidecar names), then drop the spool copy. False when it stays in the spool: the store
        failed (retried by `recover`), or another process holds the file."""
        path = self.spool_path(call_id)
        if not path.exists():
            return True  # already kept (local store) or never written
        lock = await asyncio.to_thread(try_lock, path)
        if lock is None:
            return False
        try:
            return await self._keep_locked(path, call_id, tenant_id)
        finally:
            lock.close()

    async def _keep_locked(self, path: Path, call_id: str, tenant_id: str | None) -> bool:
        meta = await asyncio.to_thread(read_sidecar, path) or {}
        description = await self.db.description(call_id)
        key = self.key(tenant_id, call_id)
        try:
            if meta.get("format") == FORMAT_MP3:
                kept = await asyncio.to_thread(self._keep_mp3, path, key)
            else:
                await asyncio.to_thread(self.store.put, path, key)
                kept = {"store": self.store.name, "key": key}
        except (StoreError, OSError, wave.Error) as exc:
            failure = self._failure(call_id, "upload", exc)
            log.error("call %s: its recording is left in the spool, kept next round", call_id)
            if description is not None and _error_stage(description) in (None, "upload"):
                await self._describe(call_id, description | {"error": failure})
            return False
        if description is not None:
            if _error_stage(description) == "upload":
                description = {k: v for k, v in description.items() if k != "error"}
            await self._describe(call_id, description | kept)
        await asyncio.to_thread(_remove_spool, path)
        return True

    def _keep_mp3(self, path: Path, key: str) -> dict[str, Any]:
        """Encode the stereo WAV and its mono mix to MP3 and store both."""
        if self._to_mp3 is None:
            raise StoreError("no MP3 encoder was given")
        stereo_file, mono_file = path.with_suffix(".mp3"), path.with_suffix(".mono.mp3")
        base = key.removesuffix(".wav")
        stereo_key, mono_key = f"{base}.mp3", f"{base}.mono.mp3"
        try:
            self._to_mp3(path, stereo_file, mono_file)
            self.store.put(stereo_file, stereo_key)
            self.store.put(mono_file, mono_key)
        finally:
            stereo_file.unlink(missing_ok=True)
            mono_file.unlink(missing_ok=True)
        return {
            "store": self.store.name,
            "key": stereo_key,
            "monoKey": mono_key,
            "format": FORMAT_MP3,
        }

    async def recover(self) -> list[str]:
        """Spool files nobody holds (a stopped process's, or a failed upload's): header fixed
        from the file size, kept in the store, described closed (`recovered` when the call never
        described it). Run at startup and every purge round. Returns their call ids."""
        done: list[str] = []
        if not self.spool.root.is_dir():
            return done
        for path in sorted(self.spool.root.glob("*.wav")):
            lock = await asyncio.to_thread(try_lock, path)
            if lock is None:
                continue  # being written or kept, by this process or another
            try:
                if await self._recover(path):
                    done.append(path.stem)
            finally:
                lock.close()
        return done

    async def _recover(self, path: Path) -> bool:
        call_id = path.stem
        meta = await asyncio.to_thread(read_sidecar, path) or {}
        tenant_id = meta.get("tenantId") if isinstance(meta.get("tenantId"), str) else None
        try:
            rate, channels, data = await asyncio.to_thread(repair, path)
        except (OSError, ValueError) as exc:
            log.error("spool file %s is not a recording (%s); left as it is", path, exc)
            return False
        known = await self.db.description(call_id)
        if known is None or known.get("store") == "spool":
            description = _description("spool", path.name, rate, channels, data)
            if known is not None and "error" in known:
                description["error"] = known["error"]  # a write error stays said
            await self._describe(call_id, description | {"recovered": known is None})
        if not await self._keep_locked(path, call_id, tenant_id):
            return False
        log.warning("call %s: recording kept from the spool (%d bytes)", call_id, data)
        return True

    async def purge(self, now: datetime | None = None, default_days: int | None = None) -> int:
        """Delete the recordings older than their tenant's retention; returns how many."""
        now = now or datetime.now(UTC)
        purged = 0
        for call_id, description in await self.db.expired(now, default_days):
            if description.get("state") == "failed":  # no audio: only the note goes
                await self.db.forget(call_id)
                continue
            store = self._stores().get(str(description.get("store")))
            key = description.get("key")
            if store is None or not isinstance(key, str):
                continue
            try:
                await asyncio.to_thread(store.delete, key)
                mono = description.get("monoKey")
                if isinstance(mono, str):
                    await asyncio.to_thread(store.delete, mono)
            except StoreError as exc:
                log.error("call %s: purging its recording failed: %s", call_id, exc)
                continue
            await self.db.forget(call_id)
            purged += 1
        if purged:
            log.info("purged %d recordings past their retention", purged)
        return purged

    def source(self, description: dict[str, Any]) -> tuple[ObjectStore, str] | None:
        """Where a closed recording can be read from."""
        if description.get("state") != "closed":
            return None
        store = self._stores().get(str(description.get("store")))
        key = description.get("key")
        if store is None or not isinstance(key, str):
            return None
        return store, key

    async def _describe(self, call_id: str, description: dict[str, Any]) -> None:
        if not await self.db.describe(call_id, description):
            log.warning("call %s: no call row to describe its recording on", call_id)


def _error_stage(description: dict[str, Any]) -> str | None:
    error = description.get("error")
    return str(error.get("stage")) if isinstance(error, dict) else None


def _remove_spool(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _description(
    store: str, key: str, rate: int, channels: int, data_bytes: int, *, dropped_bytes: int = 0
) -> dict[str, Any]:
    per_second = rate * channels * 2
    return {
        "state": "closed",
        "store": store,
        "key": key,
        "format": FORMAT_WAV,
        "channels": channels,
        "sampleRate": rate,
        "bytes": HEADER_BYTES + data_bytes,
        "durationSeconds": round(data_bytes / per_second, 3),
        "droppedSeconds": round(dropped_bytes / per_second, 3),
        "closedAt": _iso(utcnow()),
    }

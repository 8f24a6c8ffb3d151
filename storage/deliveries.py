"""Webhook deliveries: the durable outbox of server messages and each tenant's delivery log.

Every message the webhook sender (`control/webhooks.py`) has to deliver is a row here before the
first attempt, and its outcome is written back after each one: `pending` until it is
`delivered` or `failed` (attempts used up, or a final answer such as a 4xx). The destination's
`server` object (its `secret` and `headers` are credentials) is sealed with the store's
`SecretBox` as one token; only the URL is kept in clear, for the log.

Leases. A pending row belongs to the process whose `lease_owner` it carries until `lease_until`;
the owner renews its leases while it runs and releases them when it stops. Rows whose lease is
missing or expired (their process stopped or died, or the row was replayed through the API) are
`claim`ed by whichever process asks first: `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, a
single conditional `UPDATE` under SQLite's one-writer lock, so no two processes hold (and send)
the same delivery.

Reads are scoped by tenant like every other store: `tenant_id` first, `None` is the
single-tenant scope (calls without a tenant), never "any tenant".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.crypto import SecretBox
from storage.cursors import encode_cursor, newest_first
from storage.errors import Conflict
from storage.tables import WebhookDeliveryRow, utcnow

__all__ = [
    "DELIVERY_STATUSES",
    "ClaimedDelivery",
    "DeliveryPage",
    "DeliveryRecord",
    "DeliveryStatus",
    "DeliveryStore",
    "NewDelivery",
]

DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = get_args(DeliveryStatus)
_MAX_LIMIT = 1000
_Row = WebhookDeliveryRow


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A message to deliver, as the sender hands it over (target in clear: sealed here)."""

    id: str
    tenant_id: str | None
    call_id: str
    seq: int
    type: str
    url: str
    target: dict[str, Any]  # the `server` object: url, secret, timeoutSeconds, headers
    body: str  # the JSON text sent (and signed)
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A pending delivery this process now holds the lease of (target opened)."""

    id: str
    tenant_id: str | None
    call_id: str
    seq: int
    type: str
    url: str
    target: dict[str, Any]
    body: str
    attempts: int
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A delivery as the log shows it: never its target's secrets, never a remote body."""

    id: str
    tenant_id: str | None
    call_id: str
    type: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error_kind: str | None
    last_status_code: int | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "callId": self.call_id,
            "type": self.type,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "lastErrorKind": self.last_error_kind,
            "lastStatusCode": self.last_status_code,
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "deliveredAt": _iso(self.delivered_at) if self.delivered_at else None,
        }


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    items: list[DeliveryRecord]
    next_cursor: str | None  # pass back as `cursor` for the next (older) page


class DeliveryStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box

    # --- the sender's side ---------------------------------------------------------------------

    async def add(
        self,
        deliveries: Sequence[NewDelivery],
        *,
        owner: str | None,
        lease_until: datetime | None,
    ) -> None:
        """Write `deliveries` as pending, leased to `owner` (None: for whoever claims them)."""
        if not deliveries:
            return
        now = utcnow()
        rows = [
            {
                "id": d.id,
                "tenant_id": d.tenant_id,
                "call_id": d.call_id,
                "seq": d.seq,
                "type": d.type,
                "url": d.url,
                "target": self._box.encrypt_json(d.target),
                "body": d.body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": d.next_attempt_at,
                "lease_owner": owner,
                "lease_until": lease_until if owner is not None else None,
                "created_at": now,
                "updated_at": now,
            }
            for d in deliveries
        ]
        async with self._sessions() as session, session.begin():
            # Core executemany, not ORM objects: a batch of hundreds is one round trip.
            await session.execute(insert(_Row), rows)

    async def claim(
        self, owner: str, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[ClaimedDelivery]:
        """Take the lease of up to `limit` pending rows nobody holds, oldest first."""
        if limit <= 0:
            return []
        free = and_(
            _Row.status == "pending", or_(_Row.lease_until.is_(None), _Row.lease_until < now)
        )
        oldest = select(_Row.id).where(free).order_by(_Row.created_at, _Row.seq).limit(limit)
        mine: ColumnElement[bool]
        async with self._sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                # Rows another process is claiming right now are skipped, not waited for.
                ids = list((await session.scalars(oldest.with_for_update(skip_locked=True))).all())
                if not ids:
                    return []
                await session.execute(
                    update(_Row)
                    .where(_Row.id.in_(ids))
                    .values(lease_owner=owner, lease_until=lease_until)
                )
                mine = _Row.id.in_(ids)
            else:
                # One statement: SQLite runs it under its single writer lock, so the rows
                # selected are still free when they are taken (no read-then-write race).
                await session.execute(
                    update(_Row)
                    .where(_Row.id.in_(oldest.scalar_subquery()), free)
                    .values(lease_owner=owner, lease_until=lease_until)
                    .execution_options(synchronize_session=False)
                )
                mine = and_(_Row.lease_owner == owner, _Row.lease_until == lease_until)
            rows = (
                await session.scalars(
                    select(_Row).where(mine, _Row.status == "pending").order_by(_Row.seq)
                )
            ).all()
        return [
            ClaimedDelivery(
                id=row.id,
                tenant_id=row.tenant_id,
                call_id=row.call_id,
                seq=row.seq,
                type=row.type,
                url=row.url,
                target=self._box.decrypt_json(row.target),
                body=row.body,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
            )
            for row in rows
        ]

    async def renew(self, owner: str, lease_until: datetime) -> int:
        """Extend the leases `owner` holds; the number of rows it holds."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(_Row)
                .where(_Row.lease_owner == owner, _Row.status == "pending")
                .values(lease_until=lease_until)
            )
        return int(getattr(result, "rowcount", 0))

    async def release(self, owner: str) -> int:
        """Give up `owner`'s leases (it is stopping): the next process claims them at once."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(_Row)
                .where(_Row.lease_owner == owner, _Row.status == "pending")
                .values(lease_owner=None, lease_until=None)
            )
        return int(getattr(result, "rowcount", 0))

    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        error_kind: str | None,
        status_code: int | None,
    ) -> bool:
        """Write one attempt's outcome; a finished delivery's lease is dropped. False when
        `owner` no longer holds the row (it was claimed elsewhere after a lapsed lease)."""
        values: dict[str, Any] = {
            "status": status,
            "attempts": attempts,
            "next_attempt_at": next_attempt_at,
            "last_error_kind": error_kind,
            "last_status_code": status_code,
        }
        if status != "pending":
            values |= {"lease_owner": None, "lease_until": None}
        if status == "delivered":
            values["delivered_at"] = utcnow()
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(_Row)
                .where(_Row.id == delivery_id, _Row.lease_owner == owner)
                .values(**values)
            )
        return bool(getattr(result, "rowcount", 0))

    async def count(self, status: DeliveryStatus) -> int:
        async with self._sessions() as session:
            value = await session.scalar(
                select(func.count()).select_from(_Row).where(_Row.status == status)
            )
        return int(value or 0)

    # --- the log (tenant-scoped) ---------------------------------------------------------------

    async def get(self, tenant_id: str | None, delivery_id: str) -> DeliveryRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(_Row).where(_scope(tenant_id), _Row.id == delivery_id)
            )
        return None if row is None else _record(row)

    async def list(
        self,
        tenant_id: str | None,
        *,
        status: DeliveryStatus | None = None,
        call_id: str | None = None,
        type: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """Newest first; raises ValueError for a cursor this store did not give out."""
        limit = max(1, min(limit, _MAX_LIMIT))
        query = select(_Row).where(_scope(tenant_id))
        if status is not None:
            query = query.where(_Row.status == status)
        if call_id is not None:
            query = query.where(_Row.call_id == call_id)
        if type is not None:
            query = query.where(_Row.type == type)
        query = newest_first(query, _Row.created_at, _Row.id, cursor, limit)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        return DeliveryPage([_record(r) for r in rows], _encode_cursor(rows[-1]) if more else None)

    async def replay(
        self, tenant_id: str | None, delivery_id: str, *, now: datetime
    ) -> DeliveryRecord | None:
        """Send a delivered or failed delivery again, as a new series of attempts (any process
        may claim it). None when there is no such delivery in the tenant; Conflict while it
        is still pending."""
        async with self._sessions() as session, session.begin():
            row = await session.scalar(
                select(_Row).where(_scope(tenant_id), _Row.id == delivery_id)
            )
            if row is None:
                return None
            if row.status == "pending":
                raise Conflict(f"webhook delivery {delivery_id} is still pending")
            await session.execute(
                update(_Row)
                .where(_Row.id == delivery_id, _Row.status != "pending")
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    last_error_kind=None,
                    last_status_code=None,
                    delivered_at=None,
                    lease_owner=None,
                    lease_until=None,
                )
            )
            fresh = await session.scalar(
                select(_Row).where(_Row.id == delivery_id).execution_options(populate_existing=True)
            )
        assert fresh is not None  # updated in this transaction
        return _record(fresh)


def _scope(tenant_id: str | None) -> ColumnElement[bool]:
    return _Row.tenant_id.is_(None) if tenant_id is None else _Row.tenant_id == tenant_id


def _record(row: WebhookDeliveryRow) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        call_id=row.call_id,
        type=row.type,
        url=row.url,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error_kind=row.last_error_kind,
        last_status_code=row.last_status_code,
        created_at=row.created_at,
        updated_at=row.updated_at,
        delivered_at=row.delivered_at,
    )


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode_cursor(row: WebhookDeliveryRow) -> str:
    return encode_cursor(row.created_at, row.id)

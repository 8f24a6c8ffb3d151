"""Keyset paging for lists ordered by (created_at, id), newest first, with opaque cursors."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

__all__ = ["decode_cursor", "encode_cursor", "newest_first"]

T = TypeVar("T")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the last row of the previous page; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, last_id = json.loads(raw)
        parsed = datetime.fromisoformat(at)
    except (ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc
    if parsed.tzinfo is None or not isinstance(last_id, str):
        raise ValueError("invalid cursor")
    return parsed, last_id


def newest_first(
    query: Select[T],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[str],
    cursor: str | None,
    limit: int,
) -> Select[T]:
    """`query` ordered newest first, after `cursor`'s row, one row past `limit` (so the caller
    sees whether there is a next page). ValueError for a cursor not given out here."""
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        query = query.where(or_(created_at < at, and_(created_at == at, row_id < last_id)))
    return query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)

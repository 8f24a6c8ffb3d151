"""Opaque page cursors for lists ordered by (created_at, id), newest first."""

from __future__ import annotations

import base64
import json
from datetime import datetime

__all__ = ["decode_cursor", "encode_cursor"]


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

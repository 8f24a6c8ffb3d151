"""The schema, as SQLAlchemy 2 typed declarative tables.

Rows never leave `storage/`: the stores translate them into plain records. There are no ORM
relationships on purpose, so nothing can lazy-load in async code; children are fetched with
explicit queries. The initial Alembic revision spells the same schema out by hand, and a test
compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "CALL_STATUSES",
    "CALL_TYPES",
    "ApiKeyRow",
    "AssistantRow",
    "Base",
    "CallEventRow",
    "CallMessageRow",
    "CallRow",
    "CallStatus",
    "CallType",
    "CallTurnRow",
    "CredentialRow",
    "JsonType",
    "PhoneNumberRow",
    "ServerMetaRow",
    "StreamTokenUsedRow",
    "TenantRow",
    "ToolRow",
    "UtcDateTime",
    "WebhookDeliveryRow",
    "utcnow",
]

# Named constraints, so later migrations can alter them by name on both backends (SQLite batch
# mode needs names to recreate a table with a constraint dropped).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are stored as naive UTC
    and given back their UTC zone when read. Naive datetimes are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact); JSON text on SQLite.
JsonType = JSON().with_variant(JSONB(), "postgresql")

CallType = Literal["inboundPhoneCall", "outboundPhoneCall", "webCall"]
CallStatus = Literal["scheduled", "queued", "ringing", "in-progress", "forwarding", "ended"]
CALL_TYPES: tuple[str, ...] = get_args(CallType)
CALL_STATUSES: tuple[str, ...] = get_args(CallStatus)

_ID = 36  # uuid4 text
# 64-bit on PostgreSQL; SQLite only treats exactly "INTEGER PRIMARY KEY" as the rowid alias.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")
_CALL_ID = 64  # call ids come from the media layer ("call_<32 hex>"), so leave room


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonType}


def _created() -> Mapped[datetime]:
    return mapped_column(UtcDateTime(), default=utcnow)


def _updated() -> Mapped[datetime]:
    # Python-side onupdate also fires for Core update() statements that don't set the column.
    return mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


def _tenant_fk(nullable: bool = False) -> Mapped[Any]:
    return mapped_column(
        String(_ID), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=nullable
    )


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()
    # Concurrent calls this tenant may have; None: the operator's default (tenant_max_calls).
    max_calls: Mapped[int | None] = mapped_column(Integer)
    # Days a call's recording is kept; None: the operator's default (recording_retention_days).
    recording_retention_days: Mapped[int | None] = mapped_column(Integer)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant_id", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    # The public part of the key, used to find the row; the hash is compared in constant time.
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    hash: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class AssistantRow(Base):
    __tablename__ = "assistants"
    __table_args__ = (Index("ix_assistants_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class ToolRow(Base):
    __tablename__ = "tools"
    __table_args__ = (Index("ix_tools_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    type: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class PhoneNumberRow(Base):
    __tablename__ = "phone_numbers"
    __table_args__ = (Index("ix_phone_numbers_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    # Unique across tenants: an inbound call to a number must route to exactly one tenant.
    number: Mapped[str] = mapped_column(String(16), unique=True)
    provider: Mapped[str] = mapped_column(String(32), default="twilio")
    name: Mapped[str | None] = mapped_column(String(200))
    assistant_id: Mapped[str | None] = mapped_column(
        String(_ID), ForeignKey("assistants.id", ondelete="SET NULL")
    )
    twilio_account_sid: Mapped[str] = mapped_column(String(64))
    credentials_encrypted: Mapped[str] = mapped_column(Text)  # Fernet token (ASCII)
    server: Mapped[dict[str, Any] | None]
    # AVA's notificationPlan (e-mail summaries), merged over the assistant's (migration 0008).
    notification_plan: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class CallRow(Base):
    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_calls_tenant_assistant", "tenant_id", "assistant_id", "created_at"),
        Index("ix_calls_status_node", "status", "node_id"),
        Index("ix_calls_twilio_call_sid", "twilio_call_sid"),
        Index("ix_calls_status_scheduled", "status", "scheduled_at"),
        CheckConstraint(f"type IN ({_quoted(CALL_TYPES)})", name="type"),
        CheckConstraint(f"status IN ({_quoted(CALL_STATUSES)})", name="status"),
    )

    id: Mapped[str] = mapped_column(String(_CALL_ID), primary_key=True)
    tenant_id: Mapped[str | None] = _tenant_fk(nullable=True)  # None: a dev (no-tenant) call
    # No foreign keys on assistant/phone number: a call's record outlives both (as on Vapi), and
    # the recorder must never lose a call because a reference went stale.
    assistant_id: Mapped[str | None] = mapped_column(String(_ID))
    phone_number_id: Mapped[str | None] = mapped_column(String(_ID))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    ended_reason: Mapped[str | None] = mapped_column(String(128))
    ended_detail: Mapped[str | None] = mapped_column(Text)
    twilio_call_sid: Mapped[str | None] = mapped_column(String(64))
    stream_sid: Mapped[str | None] = mapped_column(String(64))
    from_number: Mapped[str | None] = mapped_column(String(64))
    to_number: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    node_id: Mapped[str | None] = mapped_column(String(128))
    # A scheduled call (status "scheduled"): when it may be placed.
    scheduled_at: Mapped[datetime | None]
    costs: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    # Vapi's call.analysis (summary, structuredData, successEvaluation) once the analysis ran.
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # The stored recording (store keys, format, duration, state); URLs are derived on read.
    recording: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # "metadata" is reserved on declarative classes, hence the attribute name.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)


class CallMessageRow(Base):
    __tablename__ = "call_messages"
    __table_args__ = (UniqueConstraint("call_id", "seq", name="uq_call_messages_seq"),)

    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(
        String(_CALL_ID), ForeignKey("calls.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(32))  # Vapi's: system|user|bot|tool_calls|…
    message: Mapped[str] = mapped_column(Text)
    time: Mapped[int] = mapped_column(BigInteger)  # epoch milliseconds
    seconds_from_start: Mapped[float] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float, default=0.0)  # seconds
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    tool_call_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(128))  # the tool's name on results


class CallTurnRow(Base):
    __tablename__ = "call_turns"

    call_id: Mapped[str] = mapped_column(
        String(_CALL_ID), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float)  # seconds from the start of the call
    user_text: Mapped[str] = mapped_column(Text)
    assistant_text: Mapped[str] = mapped_column(Text)
    interrupted: Mapped[bool] = mapped_column(Boolean)
    # Latencies in seconds; None when the turn produced no audio (see voice.events.TurnLatency).
    voice_to_voice: Mapped[float | None] = mapped_column(Float)
    endpointing: Mapped[float | None] = mapped_column(Float)
    stt: Mapped[float | None] = mapped_column(Float)
    llm_ttft: Mapped[float | None] = mapped_column(Float)
    tts_ttfb: Mapped[float | None] = mapped_column(Float)
    server: Mapped[float | None] = mapped_column(Float)
    held: Mapped[float | None] = mapped_column(Float)  # NULL on turns recorded before 0009


class CallEventRow(Base):
    __tablename__ = "call_events"
    __table_args__ = (
        Index("ix_call_events_call_at", "call_id", "at"),
        # Twilio retries status callbacks; their SequenceNumber makes a repeat detectable.
        UniqueConstraint("call_id", "kind", "sequence", name="uq_call_events_sequence"),
    )

    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(
        String(_CALL_ID), ForeignKey("calls.id", ondelete="CASCADE")
    )
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(
        String(64)
    )  # "provider-failed" | "barge-in" | "twilio-status"
    sequence: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)


class CredentialRow(Base):
    """A tenant's provider credential (Vapi's /credential): everything but its provider and name
    is one sealed JSON object, so no column ever holds a key in clear."""

    __tablename__ = "credentials"
    __table_args__ = (
        Index("ix_credentials_tenant_provider", "tenant_id", "provider", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    provider: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    secret_encrypted: Mapped[str] = mapped_column(Text)  # Fernet token of {"apiKey": …, …}
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class WebhookDeliveryRow(Base):
    """One server message to deliver (the outbox) and its delivery log (storage/deliveries.py).

    The destination's whole `server` object (secret, headers) is one sealed token in `target`;
    `url` is kept in clear for listing. `lease_*` say which process holds a pending row."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_call", "call_id", "seq"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    tenant_id: Mapped[str | None] = _tenant_fk(nullable=True)  # None: single-tenant calls
    # No foreign key: messages are written before (and may outlive) the call's record.
    call_id: Mapped[str] = mapped_column(String(_CALL_ID))
    seq: Mapped[int] = mapped_column(BigInteger)  # a call's messages, in the order they happened
    type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)  # Fernet token of the `server` object
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent (and signed)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error_kind: Mapped[str | None] = mapped_column(String(64))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    delivered_at: Mapped[datetime | None]


class StreamTokenUsedRow(Base):
    """A media-stream token already used (its id is the call id it carries), kept until it
    expires: a token is good for one stream, across every process sharing the database."""

    __tablename__ = "stream_tokens_used"
    __table_args__ = (Index("ix_stream_tokens_used_expires_at", "expires_at"),)

    token_id: Mapped[str] = mapped_column(String(_CALL_ID), primary_key=True)
    expires_at: Mapped[datetime]


class ServerMetaRow(Base):
    """Facts about the database itself, by name: `key_fingerprint` identifies the server key it
    was set up with (storage/keys.py), so a process with another key is refused."""

    __tablename__ = "server_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))

"""A tenant's configuration: assistants, tools and Twilio phone numbers.

Every method takes `tenant_id` first and filters on it; an id from another tenant behaves exactly
like an id that does not exist. The one unscoped lookup, `PhoneNumberStore.route`, exists because
an inbound call names only the dialed number.

Webhook and tool secrets (`server.secret`, legacy `serverUrlSecret`, also inside inline tools) are
encrypted with the store's `SecretBox` before they are written and decrypted when a record is
read, so a call gets usable config while the database holds only ciphertext. They are
write-only through the API: `to_vapi()` leaves them out, as Vapi never returns a credential.
A PATCH whose new `server` omits `secret` keeps the stored one if the URL is unchanged (so a
client echoing a GET back does not silently drop it; `"secret": null` clears it); a new URL
never inherits the old secret.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.crypto import MASKED, SecretBox, open_secrets, seal_secrets, without_secrets
from storage.errors import Conflict, NotFound
from storage.tables import AssistantRow, PhoneNumberRow, ToolRow, utcnow
from storage.vapi import iso
from voice.assistant import Assistant, check_tool

__all__ = [
    "UNSET",
    "AssistantRecord",
    "AssistantStore",
    "PhoneNumberRecord",
    "PhoneNumberStore",
    "ToolRecord",
    "ToolStore",
    "TwilioCredentials",
    "Unset",
]

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_MAX_LIMIT = 1000
_Row = TypeVar("_Row", AssistantRow, ToolRow, PhoneNumberRow)


class Unset(Enum):
    """`UNSET`: leave this field as it is (None would mean "clear it")."""

    UNSET = "UNSET"


UNSET = Unset.UNSET


def _stamps(record: AssistantRecord | ToolRecord | PhoneNumberRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "orgId": record.tenant_id,
        "createdAt": iso(record.created_at),
        "updatedAt": iso(record.updated_at),
    }


@dataclass(frozen=True, slots=True)
class AssistantRecord:
    id: str
    tenant_id: str
    name: str
    config: dict[str, Any]  # Vapi JSON as the tenant set it; defaults stay AVA's current ones
    created_at: datetime
    updated_at: datetime

    def assistant(self) -> Assistant:
        return Assistant.model_validate(self.config)

    def to_vapi(self) -> dict[str, Any]:
        return {**without_secrets(self.config), **_stamps(self)}


@dataclass(frozen=True, slots=True)
class ToolRecord:
    id: str
    tenant_id: str
    type: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def to_vapi(self) -> dict[str, Any]:
        return {**without_secrets(self.config), **_stamps(self)}


@dataclass(frozen=True, slots=True)
class TwilioCredentials:
    """An auth token, or an API key and secret. Secrets are left out of repr (logs)."""

    account_sid: str
    auth_token: str | None = field(default=None, repr=False)
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.account_sid or not (self.auth_token or (self.api_key and self.api_secret)):
            raise ValueError("Twilio needs an account SID and an auth token or API key + secret")


@dataclass(frozen=True, slots=True)
class PhoneNumberRecord:
    id: str
    tenant_id: str
    number: str
    provider: str
    name: str | None
    assistant_id: str | None
    twilio_account_sid: str
    server: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    # AVA's notificationPlan (voice.notification_plan), merged over the assistant's per call.
    notification_plan: dict[str, Any] | None = None

    def to_vapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **_stamps(self),
            "provider": self.provider,
            "number": self.number,
            "twilioAccountSid": self.twilio_account_sid,
            "status": "active",
        }
        server = None if self.server is None else without_secrets(self.server, in_server=True)
        optional = {
            "name": self.name,
            "assistantId": self.assistant_id,
            "server": server,
            "notificationPlan": self.notification_plan,
        }
        return out | {k: v for k, v in optional.items() if v is not None}


class _Scoped:
    """Tenant-filtered get/list/delete shared by the stores below; `box` seals their secrets."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box

    def _seal(self, config: dict[str, Any]) -> dict[str, Any]:
        sealed: dict[str, Any] = seal_secrets(config, self._box)
        return sealed

    def _open(self, config: dict[str, Any]) -> dict[str, Any]:
        opened: dict[str, Any] = open_secrets(config, self._box)
        return opened

    @staticmethod
    async def _row(
        session: AsyncSession, table: type[_Row], tenant_id: str, id: str
    ) -> _Row | None:
        return await session.scalar(
            select(table).where(table.tenant_id == tenant_id, table.id == id)
        )

    async def _list(self, table: type[_Row], tenant_id: str, limit: int) -> list[_Row]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(table)
                .where(table.tenant_id == tenant_id)
                .order_by(table.created_at.desc(), table.id.desc())
                .limit(max(1, min(limit, _MAX_LIMIT)))
            )
            return list(rows)

    async def _delete(self, table: type[_Row], tenant_id: str, id: str) -> bool:
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                delete(table).where(table.tenant_id == tenant_id, table.id == id)
            )
        return bool(getattr(result, "rowcount", 0))


class AssistantStore(_Scoped):
    async def create(
        self, tenant_id: str, config: Assistant | Mapping[str, Any]
    ) -> AssistantRecord:
        """Validate (raises pydantic.ValidationError) and store a Vapi-shaped assistant."""
        data = _assistant_json(config)
        row = AssistantRow(
            id=str(uuid.uuid4()), tenant_id=tenant_id, name=_name(data), config=self._seal(data)
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return self._record(row)

    async def get(self, tenant_id: str, assistant_id: str) -> AssistantRecord | None:
        async with self._sessions() as session:
            row = await self._row(session, AssistantRow, tenant_id, assistant_id)
        return None if row is None else self._record(row)

    async def list(self, tenant_id: str, *, limit: int = 100) -> list[AssistantRecord]:
        return [self._record(r) for r in await self._list(AssistantRow, tenant_id, limit)]

    async def update(
        self, tenant_id: str, assistant_id: str, changes: Mapping[str, Any]
    ) -> AssistantRecord | None:
        """Vapi's PATCH: top-level fields in `changes` replace the stored ones."""
        async with self._sessions() as session, session.begin():
            row = await self._row(session, AssistantRow, tenant_id, assistant_id)
            if row is None:
                return None
            current = self._open(row.config)
            data = _assistant_json({**current, **_kept_secret(current, changes)})
            row.config = self._seal(data)
            row.name = _name(data)
        return self._record(row)

    async def delete(self, tenant_id: str, assistant_id: str) -> bool:
        return await self._delete(AssistantRow, tenant_id, assistant_id)

    def _record(self, row: AssistantRow) -> AssistantRecord:
        return AssistantRecord(
            row.id, row.tenant_id, row.name, self._open(row.config), row.created_at,
            row.updated_at,
        )  # fmt: skip


class ToolStore(_Scoped):
    async def create(self, tenant_id: str, config: Mapping[str, Any]) -> ToolRecord:
        data = _tool_json(config)
        row = ToolRow(
            id=str(uuid.uuid4()), tenant_id=tenant_id, type=data["type"], config=self._seal(data)
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return self._record(row)

    async def get(self, tenant_id: str, tool_id: str) -> ToolRecord | None:
        async with self._sessions() as session:
            row = await self._row(session, ToolRow, tenant_id, tool_id)
        return None if row is None else self._record(row)

    async def list(self, tenant_id: str, *, limit: int = 100) -> list[ToolRecord]:
        return [self._record(r) for r in await self._list(ToolRow, tenant_id, limit)]

    async def update(
        self, tenant_id: str, tool_id: str, changes: Mapping[str, Any]
    ) -> ToolRecord | None:
        async with self._sessions() as session, session.begin():
            row = await self._row(session, ToolRow, tenant_id, tool_id)
            if row is None:
                return None
            current = self._open(row.config)
            data = _tool_json({**current, **_kept_secret(current, changes)})
            row.config = self._seal(data)
            row.type = data["type"]
        return self._record(row)

    async def delete(self, tenant_id: str, tool_id: str) -> bool:
        return await self._delete(ToolRow, tenant_id, tool_id)

    def _record(self, row: ToolRow) -> ToolRecord:
        return ToolRecord(
            row.id, row.tenant_id, row.type, self._open(row.config), row.created_at, row.updated_at
        )


class PhoneNumberStore(_Scoped):
    """Imported Twilio numbers; their credentials are encrypted with `box` before storage."""

    async def create(
        self,
        tenant_id: str,
        *,
        number: str,
        credentials: TwilioCredentials,
        name: str | None = None,
        assistant_id: str | None = None,
        server: dict[str, Any] | None = None,
        notification_plan: dict[str, Any] | None = None,
    ) -> PhoneNumberRecord:
        """Raises ValueError (not E.164), NotFound (assistant not in this tenant) or Conflict
        (number already imported, by any tenant)."""
        if not _E164.match(number):
            raise ValueError(f"{number!r} is not an E.164 number (like +14155550123)")
        row = PhoneNumberRow(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            number=number,
            provider="twilio",
            name=name,
            assistant_id=assistant_id,
            server=None if server is None else self._seal_server(server),
            notification_plan=notification_plan,
            twilio_account_sid=credentials.account_sid,
            credentials_encrypted=self._encrypt(credentials),
        )
        try:
            async with self._sessions() as session, session.begin():
                await self._check_assistant(session, tenant_id, assistant_id)
                session.add(row)
        except IntegrityError as exc:
            raise Conflict(f"phone number {number} is already imported") from exc
        return self._record(row)

    async def get(self, tenant_id: str, phone_number_id: str) -> PhoneNumberRecord | None:
        async with self._sessions() as session:
            row = await self._row(session, PhoneNumberRow, tenant_id, phone_number_id)
        return None if row is None else self._record(row)

    async def list(self, tenant_id: str, *, limit: int = 100) -> list[PhoneNumberRecord]:
        return [self._record(r) for r in await self._list(PhoneNumberRow, tenant_id, limit)]

    async def update(
        self,
        tenant_id: str,
        phone_number_id: str,
        *,
        name: str | None | Unset = UNSET,
        assistant_id: str | None | Unset = UNSET,
        server: dict[str, Any] | None | Unset = UNSET,
        credentials: TwilioCredentials | Unset = UNSET,
        notification_plan: dict[str, Any] | None | Unset = UNSET,
    ) -> PhoneNumberRecord | None:
        async with self._sessions() as session, session.begin():
            row = await self._row(session, PhoneNumberRow, tenant_id, phone_number_id)
            if row is None:
                return None
            if not isinstance(assistant_id, Unset):
                await self._check_assistant(session, tenant_id, assistant_id)
                row.assistant_id = assistant_id
            if not isinstance(name, Unset):
                row.name = name
            if not isinstance(server, Unset):
                new_server = server
                if new_server is not None and row.server is not None:
                    current = {"server": self._open_server(row.server)}
                    new_server = _kept_secret(current, {"server": new_server})["server"]
                row.server = None if new_server is None else self._seal_server(new_server)
            if not isinstance(credentials, Unset):
                row.twilio_account_sid = credentials.account_sid
                row.credentials_encrypted = self._encrypt(credentials)
            if not isinstance(notification_plan, Unset):
                row.notification_plan = notification_plan
            row.updated_at = utcnow()
        return self._record(row)

    async def delete(self, tenant_id: str, phone_number_id: str) -> bool:
        return await self._delete(PhoneNumberRow, tenant_id, phone_number_id)

    async def credentials(self, tenant_id: str, phone_number_id: str) -> TwilioCredentials | None:
        async with self._sessions() as session:
            row = await self._row(session, PhoneNumberRow, tenant_id, phone_number_id)
        if row is None:
            return None
        return TwilioCredentials(**self._box.decrypt_json(row.credentials_encrypted))

    async def route(self, number: str) -> PhoneNumberRecord | None:
        """The number an inbound call dialed, whichever tenant owns it (the only unscoped read:
        Twilio's voice webhook tells us the number, and the number tells us the tenant)."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(PhoneNumberRow).where(PhoneNumberRow.number == number)
            )
        return None if row is None else self._record(row)

    def _seal_server(self, server: dict[str, Any]) -> dict[str, Any]:
        sealed: dict[str, Any] = seal_secrets(server, self._box, in_server=True)
        return sealed

    def _open_server(self, server: dict[str, Any]) -> dict[str, Any]:
        return self._open(server)

    def _record(self, row: PhoneNumberRow) -> PhoneNumberRecord:
        server = None if row.server is None else self._open_server(row.server)
        return PhoneNumberRecord(
            row.id, row.tenant_id, row.number, row.provider, row.name, row.assistant_id,
            row.twilio_account_sid, server, row.created_at, row.updated_at,
            row.notification_plan,
        )  # fmt: skip

    def _encrypt(self, credentials: TwilioCredentials) -> str:
        values = {
            "account_sid": credentials.account_sid,
            "auth_token": credentials.auth_token,
            "api_key": credentials.api_key,
            "api_secret": credentials.api_secret,
        }
        return self._box.encrypt_json({k: v for k, v in values.items() if v is not None})

    async def _check_assistant(
        self, session: AsyncSession, tenant_id: str, assistant_id: str | None
    ) -> None:
        # The foreign key alone would accept another tenant's assistant id.
        if assistant_id is not None and (
            await self._row(session, AssistantRow, tenant_id, assistant_id) is None
        ):
            raise NotFound(f"assistant {assistant_id} not found")


def _owned_fields_dropped(config: Mapping[str, Any]) -> dict[str, Any]:
    # Server-owned fields a client may echo back from a GET; they are not configuration.
    return {k: v for k, v in config.items() if k not in ("id", "orgId", "createdAt", "updatedAt")}


def _assistant_json(config: Assistant | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, Assistant):
        model = config
    else:
        model = Assistant.model_validate(_owned_fields_dropped(config))
    # exclude_unset: store what the tenant said, so AVA's defaults can improve under it later.
    return model.model_dump(by_alias=True, exclude_unset=True, mode="json")


def _name(config: Mapping[str, Any]) -> str:
    return str(config.get("name") or "Assistant")


def _tool_json(config: Mapping[str, Any]) -> dict[str, Any]:
    """The tool to store; ValueError naming the field when it is not one (bounds and server
    checked before anything is written, so a refused tool leaves no row)."""
    data = _owned_fields_dropped(config)
    if not isinstance(data.get("type"), str) or not data["type"]:
        raise ValueError('type: a tool needs a string `type` (e.g. "function")')
    check_tool(data)
    return data


def _kept_secret(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`changes`, with the stored `server.secret` carried into a new `server` object that
    omits `secret` but keeps the same URL (a GET echoed back never shows the secret), and
    likewise the stored value of each header sent back masked."""
    out = dict(changes)
    old, new = current.get("server"), changes.get("server")
    if not (
        isinstance(old, Mapping) and isinstance(new, Mapping) and new.get("url") == old.get("url")
    ):
        return out
    kept = dict(new)
    if "secret" not in new and isinstance(old.get("secret"), str):
        kept["secret"] = old["secret"]
    # Header values come back masked (MASKED) from a GET: a masked one keeps the stored value.
    # For another URL nothing is kept, and seal_secrets drops the placeholder.
    old_headers, new_headers = old.get("headers"), new.get("headers")
    if isinstance(old_headers, Mapping) and isinstance(new_headers, Mapping):
        kept["headers"] = {
            name: old_headers[name] if value == MASKED and name in old_headers else value
            for name, value in new_headers.items()
        }
    out["server"] = kept
    return out

"""The database side of the app: one engine, the stores over it, the server's secret.

Built in the lifespan (`open_stores`) and by the admin CLI, so both hash API keys and encrypt
Twilio credentials with the same key.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from control.settings import Settings
from storage import (
    AssistantStore,
    CallStore,
    PhoneNumberStore,
    SecretBox,
    TenantStore,
    ToolStore,
    ensure_migrated,
    make_engine,
    make_sessionmaker,
)

__all__ = ["Stores", "open_stores", "server_secret"]

_SECRET_FILE = "secret.key"


def server_secret(settings: Settings) -> str:
    """AVA_SECRET_KEY, or a key generated once into the data dir.

    Not a random key per process: API key hashes and encrypted Twilio tokens must survive a
    restart, and `ava key create` (another process) must hash the way the server checks."""
    configured = settings.secret_key.get_secret_value()
    if configured:
        return configured
    path = settings.data_dir / _SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # O_EXCL: two processes starting at once must not each write (and use) a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(value)
    return value


@dataclass(frozen=True, slots=True)
class Stores:
    engine: AsyncEngine
    tenants: TenantStore
    assistants: AssistantStore
    tools: ToolStore
    phone_numbers: PhoneNumberStore
    calls: CallStore
    # Seals secrets kept outside the resource stores (a transient assistant on a call record).
    box: SecretBox

    async def close(self) -> None:
        await self.engine.dispose()


async def open_stores(settings: Settings, *, check_migrated: bool = True) -> Stores:
    """Stores over the configured database; raises NotMigrated unless it is at head."""
    engine = make_engine(settings.resolved_database_url())
    try:
        if check_migrated:
            await ensure_migrated(engine)
    except BaseException:
        await engine.dispose()
        raise
    sessions = make_sessionmaker(engine)
    secret = server_secret(settings)
    box = SecretBox.from_secret(secret)
    return Stores(
        engine=engine,
        tenants=TenantStore(sessions, secret_key=secret),
        assistants=AssistantStore(sessions, box),
        tools=ToolStore(sessions, box),
        phone_numbers=PhoneNumberStore(sessions, box),
        calls=CallStore(sessions),
        box=box,
    )

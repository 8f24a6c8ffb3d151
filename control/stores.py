"""The database side of the app: one engine, the stores over it, the server's secret.

Built in the lifespan (`open_stores`) and by the admin CLI, so both hash API keys and encrypt
Twilio credentials with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from control.settings import Settings
from storage import (
    AssistantStore,
    CallStore,
    CredentialStore,
    PhoneNumberStore,
    SecretBox,
    TenantStore,
    ToolStore,
    ensure_migrated,
    make_engine,
    make_sessionmaker,
)
from storage.deliveries import DeliveryStore
from storage.keys import check_key
from storage.orphans import OrphanStore

__all__ = ["Stores", "open_stores", "server_secret"]


def server_secret(settings: Settings) -> str:
    """AVA_SECRET_KEY, or in dev mode a key generated once beside the SQLite database.

    Not a random key per process, nor one found relative to the working directory: API key
    hashes and encrypted Twilio tokens must survive a restart, and `ava key create` (another
    process, maybe elsewhere) must hash the way the server checks. Raises SecretKeyMissing
    outside dev mode without AVA_SECRET_KEY."""
    return settings.server_key().value


@dataclass(frozen=True, slots=True)
class Stores:
    engine: AsyncEngine
    tenants: TenantStore
    assistants: AssistantStore
    tools: ToolStore
    phone_numbers: PhoneNumberStore
    calls: CallStore
    credentials: CredentialStore
    # Seals secrets kept outside the resource stores (a transient assistant on a call record).
    box: SecretBox
    # The webhook outbox and delivery log (control/webhooks.py, GET /webhook-delivery).
    deliveries: DeliveryStore
    # Calls of dead nodes (control/orphans.py).
    orphans: OrphanStore

    async def close(self) -> None:
        await self.engine.dispose()


async def open_stores(settings: Settings, *, check_migrated: bool = True) -> Stores:
    """Stores over the configured database; raises NotMigrated unless it is at head,
    SecretKeyMissing without a key where one is required, SecretKeyMismatch when the database
    was set up with another key (it records this one's fingerprint if it has none)."""
    key = settings.server_key()
    engine = make_engine(settings.resolved_database_url())
    try:
        if check_migrated:
            await ensure_migrated(engine)
        await check_key(engine, key)
    except BaseException:
        await engine.dispose()
        raise
    sessions = make_sessionmaker(engine)
    secret = key.value
    box = SecretBox.from_secret(secret)
    return Stores(
        engine=engine,
        tenants=TenantStore(sessions, secret_key=secret),
        assistants=AssistantStore(sessions, box),
        tools=ToolStore(sessions, box),
        phone_numbers=PhoneNumberStore(sessions, box),
        calls=CallStore(sessions),
        credentials=CredentialStore(sessions, box),
        box=box,
        deliveries=DeliveryStore(sessions, box),
        orphans=OrphanStore(sessions),
    )

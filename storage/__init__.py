"""Durable state: tenants, API keys, assistants, phone numbers, and the record of every call.

SQLAlchemy 2 async over SQLite (embedded default) or PostgreSQL. Imports only `voice.events`,
`voice.types` and `voice.assistant` from the project; everything it returns is plain data.
"""

from storage.calls import (
    CallEventRecord,
    CallMessage,
    CallPage,
    CallRecord,
    CallStatus,
    CallStore,
    CallTurn,
    CallType,
    to_vapi,
)
from storage.credentials import CredentialRecord, CredentialStore, ProviderCredential
from storage.crypto import SecretBox, derive_key
from storage.deliveries import DeliveryPage, DeliveryRecord, DeliveryStatus, DeliveryStore
from storage.engine import default_sqlite_url, display_url, make_engine, make_sessionmaker
from storage.errors import Conflict, DecryptionFailed, NotFound, NotMigrated, StorageError
from storage.keys import SecretKeyError, SecretKeyMismatch, SecretKeyMissing, ServerKey
from storage.migrate import current_revision, ensure_migrated, head_revision, upgrade
from storage.recorder import CallRecorder
from storage.resources import (
    UNSET,
    AssistantRecord,
    AssistantStore,
    PhoneNumberRecord,
    PhoneNumberStore,
    ToolRecord,
    ToolStore,
    TwilioCredentials,
)
from storage.tenants import ApiKey, CreatedApiKey, KeyIdentity, Tenant, TenantStore
from storage.writes import CallWrites

__all__ = [
    "UNSET",
    "ApiKey",
    "AssistantRecord",
    "AssistantStore",
    "CallEventRecord",
    "CallMessage",
    "CallPage",
    "CallRecord",
    "CallRecorder",
    "CallStatus",
    "CallStore",
    "CallTurn",
    "CallType",
    "CallWrites",
    "Conflict",
    "CreatedApiKey",
    "CredentialRecord",
    "CredentialStore",
    "DecryptionFailed",
    "DeliveryPage",
    "DeliveryRecord",
    "DeliveryStatus",
    "DeliveryStore",
    "KeyIdentity",
    "NotFound",
    "NotMigrated",
    "PhoneNumberRecord",
    "PhoneNumberStore",
    "ProviderCredential",
    "SecretBox",
    "SecretKeyError",
    "SecretKeyMismatch",
    "SecretKeyMissing",
    "ServerKey",
    "StorageError",
    "Tenant",
    "TenantStore",
    "ToolRecord",
    "ToolStore",
    "TwilioCredentials",
    "current_revision",
    "default_sqlite_url",
    "derive_key",
    "display_url",
    "ensure_migrated",
    "head_revision",
    "make_engine",
    "make_sessionmaker",
    "to_vapi",
    "upgrade",
]

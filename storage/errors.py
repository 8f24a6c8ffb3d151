"""What the storage layer raises. The control API maps these to HTTP problems."""

from __future__ import annotations

__all__ = ["Conflict", "DecryptionFailed", "NotFound", "NotMigrated", "StorageError"]


class StorageError(Exception):
    """Base class of every storage error."""


class NotMigrated(StorageError):
    """The database schema is not at the revision this code needs."""


class NotFound(StorageError):
    """A referenced row does not exist in the caller's tenant (or at all: callers can't tell)."""


class Conflict(StorageError):
    """A uniqueness rule was broken, e.g. a phone number already imported by some tenant."""


class DecryptionFailed(StorageError):
    """A stored secret could not be decrypted: wrong or rotated-away key, or a corrupted value."""

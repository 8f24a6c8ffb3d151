"""Transient assistants shared by every node: the voice webhook that asked `assistant-request`
may run on one process and the media stream arrive at another.

One Redis key per call (`SET … EX ttl`, the stream token's lifetime), the assistant's JSON
sealed with the server key (it carries the tenant's webhook secrets and headers), taken once
(`GETDEL`): a replayed stream finds nothing.
"""

from __future__ import annotations

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage.crypto import SecretBox
from storage.errors import DecryptionFailed
from voice.assistant import Assistant

__all__ = ["RedisAssistants", "SharedStoreUnavailable"]

_MAX_BYTES = 1_000_000  # an assistant is bounded far below this (voice.json_bounds)


class SharedStoreUnavailable(Exception):
    """Redis did not answer; the caller decides what the call loses."""


class RedisAssistants:
    def __init__(
        self,
        url: str,
        box: SecretBox,
        ttl: float,
        *,
        prefix: str = "ava:pending-assistant:",
        timeout: float = 0.5,
    ) -> None:
        self.ttl = ttl
        self.prefix = prefix
        self._box = box
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _key(self, tenant_id: str, call_id: str) -> str:
        return f"{self.prefix}{tenant_id}:{call_id}"

    async def put(self, tenant_id: str, call_id: str, assistant: Assistant) -> None:
        sealed = self._box.encrypt_json(assistant.to_json())
        try:
            await self._redis.set(self._key(tenant_id, call_id), sealed, ex=max(1, round(self.ttl)))
        except RedisError as exc:
            raise SharedStoreUnavailable(f"Redis: {exc}") from exc

    async def take(self, tenant_id: str, call_id: str) -> Assistant | None:
        """The call's assistant, once; None when there is none (taken, expired, never put)."""
        try:
            raw = await self._redis.getdel(self._key(tenant_id, call_id))
        except RedisError as exc:
            raise SharedStoreUnavailable(f"Redis: {exc}") from exc
        if not isinstance(raw, bytes) or len(raw) > _MAX_BYTES:
            return None
        try:
            return Assistant.model_validate(self._box.decrypt_json(raw.decode("ascii")))
        except (DecryptionFailed, UnicodeError, ValueError, ValidationError):
            # Sealed with another key (a misconfigured node) or not ours: no assistant.
            return None

    async def aclose(self) -> None:
        await self._redis.aclose()

"""Which AVA processes are alive: one heartbeat key per node, with a TTL.

A node is one server process (`AVA_NODE_ID`, default host-pid). It writes its heartbeat every
`beat_seconds`; the key expires `ttl_seconds` after the last one, so a node that was killed,
froze or lost its network stops counting as alive within the TTL. Its calls are then orphans,
and whichever surviving node claims the dead node first (`claim`, SET NX) closes them — one
closer per dead node however many nodes notice at once.

`LocalNodes` is the single-process default (no Redis): this process is the only node, so every
other node id is dead. With several processes on one database it would close the others' calls:
running several processes needs `AVA_REDIS_URL` (the server refuses to guess).

A Redis error is not taken as evidence of anyone's death: `alive` raises `NodesUnavailable` and
the sweep waits for the next round rather than closing live calls.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["LocalNodes", "NodeRegistry", "NodesUnavailable", "RedisNodes"]


class NodesUnavailable(Exception):
    """The registry could not say who is alive (Redis down or slow)."""


class NodeRegistry(Protocol):
    node_id: str
    beat_seconds: float
    # Other processes may be alive (Redis); False: this process is alone on its database.
    shared: bool

    async def beat(self) -> None:
        """Say this node is alive for another TTL."""
        ...

    async def alive(self, node_ids: Collection[str]) -> set[str]:
        """The ones among `node_ids` whose heartbeat has not expired."""
        ...

    async def claim(self, dead_node: str) -> bool:
        """True for exactly one caller per dead node (for a while): that one closes its calls."""
        ...

    async def leave(self) -> None:
        """This node stops cleanly: drop its heartbeat."""
        ...

    async def aclose(self) -> None: ...


class LocalNodes:
    """One process, no Redis: it is the only node alive."""

    shared = False

    def __init__(self, node_id: str, beat_seconds: float = 5.0) -> None:
        self.node_id = node_id
        self.beat_seconds = beat_seconds

    async def beat(self) -> None:
        return None

    async def alive(self, node_ids: Collection[str]) -> set[str]:
        return {n for n in node_ids if n == self.node_id}

    async def claim(self, dead_node: str) -> bool:
        return dead_node != self.node_id

    async def leave(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisNodes:
    shared = True

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        beat_seconds: float = 5.0,
        ttl_seconds: float = 15.0,
        prefix: str = "ava:",
        timeout: float = 1.0,
    ) -> None:
        if not 0 < beat_seconds < ttl_seconds:
            raise ValueError("the heartbeat must come more often than its TTL")
        self.node_id = node_id
        self.beat_seconds = beat_seconds
        self.ttl_seconds = ttl_seconds
        self._prefix = prefix
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def _key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    async def beat(self) -> None:
        try:
            await self._redis.set(
                self._key(self.node_id), repr(time.time()), px=int(self.ttl_seconds * 1000)
            )
        except RedisError as exc:
            raise NodesUnavailable(f"heartbeat not written: {exc}") from exc

    async def alive(self, node_ids: Collection[str]) -> set[str]:
        ids = list(node_ids)
        if not ids:
            return set()
        try:
            values = await self._redis.mget([self._key(n) for n in ids])
        except RedisError as exc:
            raise NodesUnavailable(f"heartbeats not read: {exc}") from exc
        return {n for n, value in zip(ids, values, strict=True) if value is not None}

    async def claim(self, dead_node: str) -> bool:
        # Held for a few TTLs: long enough to close the calls, short enough that a closer that
        # died half-way is replaced.
        try:
            taken = await self._redis.set(
                f"{self._prefix}orphans:{dead_node}",
                self.node_id,
                nx=True,
                px=int(self.ttl_seconds * 3000),
            )
        except RedisError as exc:
            raise NodesUnavailable(f"claim not written: {exc}") from exc
        return bool(taken)

    async def leave(self) -> None:
        try:
            await self._redis.delete(self._key(self.node_id))
        except RedisError:
            pass  # it expires by itself within the TTL

    async def aclose(self) -> None:
        await self._redis.aclose()

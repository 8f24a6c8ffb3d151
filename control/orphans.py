"""This node's heartbeat, and the calls of dead nodes closed by whoever survives.

Runs for the app's lifetime (`running_node`): a first sweep before the server takes calls, then a
heartbeat and a sweep every `beat_seconds`. A dead node's calls are closed by one survivor (the
registry's claim) with `call.in-progress.error-server-died`, and each one that has a Twilio leg is
hung up at Twilio, because nothing else will: the media stream died with the node, but Twilio's
`<Connect>` would otherwise keep the caller on a silent line until the stream times out, and
an outbound call would keep costing minutes.

The hang-ups run apart from the sweep, a few at a time (`hanging_up`): closing the rows is one
database write, but each hang-up is a request to Twilio, and a node that waited on a hundred
of them in its heartbeat loop would miss its own heartbeat (and be taken for dead) or, at
startup, hold its readiness behind Twilio's answers.

A node only ever closes other nodes' calls: restarting one process never touches the live calls
of the others. Single-process (no Redis) the previous process's calls are closed at startup, as
before nodes had ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import SQLAlchemyError

from control.outbound import hang_up_at_twilio
from control.settings import Settings
from control.stores import Stores
from control.twilio_rest import TwilioRestError
from storage.nodes import LocalNodes, NodeRegistry, NodesUnavailable, RedisNodes
from storage.orphans import OrphanCall

__all__ = ["OrphanSweeper", "default_node_id", "registry_for", "running_node"]

log = logging.getLogger("ava.nodes")

# Twilio hang-ups in flight at once, and waiting: a backlog past that (a crash of many big
# nodes at once) is dropped with a warning; Twilio still ends each call when its stream's
# websocket is found dead, only later.
_HANG_UP_CONCURRENCY = 8
_HANG_UP_BACKLOG = 10_000
# At shutdown, how long queued hang-ups may still take.
_HANG_UP_GRACE_SECONDS = 2.0


def default_node_id() -> str:
    """Host, pid and a random part: a restarted process is a new node even where host and pid
    repeat (a container restarted in place is pid 1 on the same hostname), so its predecessor's
    calls are orphans like any dead node's."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def registry_for(settings: Settings) -> NodeRegistry:
    node_id = settings.node_id or default_node_id()
    if settings.redis_url:
        return RedisNodes(
            settings.redis_url,
            node_id,
            beat_seconds=settings.node_heartbeat_seconds,
            ttl_seconds=settings.node_ttl_seconds,
        )
    return LocalNodes(node_id, beat_seconds=settings.node_heartbeat_seconds)


class OrphanSweeper:
    def __init__(self, nodes: NodeRegistry, stores: Stores, settings: Settings) -> None:
        self.nodes = nodes
        self._stores = stores
        self._settings = settings
        # Alone on the database, at startup: rows no node claimed (a ringing outbound call,
        # rows from before node ids) are the previous process's too.
        self._sweep_unowned = not nodes.shared
        self._hang_ups: asyncio.Queue[OrphanCall] = asyncio.Queue(_HANG_UP_BACKLOG)
        self.hang_ups_dropped = 0

    async def sweep(self, *, startup: bool = False) -> list[OrphanCall]:
        """Close the calls of every dead node this node can claim; returns them."""
        holders = await self._stores.orphans.nodes_with_unfinished_calls()
        named = {n for n in holders if n is not None and n != self.nodes.node_id}
        dead: list[str | None] = [*sorted(named - await self.nodes.alive(named))]
        if startup and self._sweep_unowned and None in holders:
            dead.append(None)
        closed: list[OrphanCall] = []
        for node in dead:
            if node is not None and not await self.nodes.claim(node):
                continue  # another survivor is closing them
            detail = (
                f"node {node} stopped before the call ended"
                if node is not None
                else "the process running this call stopped before the call ended"
            )
            calls = await self._stores.orphans.close_calls_of(node, detail=detail)
            if calls:
                log.warning("closed %d calls of dead node %s", len(calls), node)
            for call in calls:
                self._queue_hang_up(call)
            closed += calls
        return closed

    async def run(self) -> None:
        """Heartbeat and sweep until cancelled; a Redis outage skips rounds, never guesses."""
        while True:
            await asyncio.sleep(self.nodes.beat_seconds)
            try:
                await self.nodes.beat()
                await self.sweep()
            except NodesUnavailable as exc:
                log.warning("node registry unavailable, sweep skipped: %s", exc)
            except SQLAlchemyError as exc:
                # The database blipped: the next round tries again (this loop must outlive it).
                log.warning("orphan sweep failed, retried next round: %s", exc)

    def _queue_hang_up(self, call: OrphanCall) -> None:
        if not call.twilio_call_sid:
            return
        try:
            self._hang_ups.put_nowait(call)
        except asyncio.QueueFull:
            self.hang_ups_dropped += 1
            log.warning("call %s: Twilio hang-up of an orphan dropped (backlog full)", call.id)

    async def hanging_up(self) -> None:
        """Hang up the closed calls' Twilio legs, `_HANG_UP_CONCURRENCY` at a time, until
        cancelled."""
        slots = asyncio.Semaphore(_HANG_UP_CONCURRENCY)
        async with asyncio.TaskGroup() as tg:
            while True:
                call = await self._hang_ups.get()
                await slots.acquire()
                tg.create_task(self._hang_up_one(call, slots))

    async def hung_up(self) -> None:
        """Until every hang-up queued so far has been tried (`hanging_up` must be running)."""
        await self._hang_ups.join()

    async def _hang_up_one(self, call: OrphanCall, slots: asyncio.Semaphore) -> None:
        try:
            await self._hang_up(call)
        except (SQLAlchemyError, OSError) as exc:
            # Its credentials could not be read: the row is closed all the same.
            log.warning("call %s: Twilio hang-up of an orphan failed: %s", call.id, exc)
        finally:
            slots.release()
            self._hang_ups.task_done()

    async def _hang_up(self, call: OrphanCall) -> None:
        assert call.twilio_call_sid
        try:
            await hang_up_at_twilio(
                self._settings,
                self._stores,
                tenant_id=call.tenant_id,
                phone_number_id=call.phone_number_id,
                call_sid=call.twilio_call_sid,
            )
        except TwilioRestError as exc:
            log.warning("call %s: Twilio hang-up of an orphan failed: %s", call.id, exc)


@asynccontextmanager
async def running_node(settings: Settings, stores: Stores) -> AsyncIterator[NodeRegistry]:
    """Join the cluster for the app's lifetime: heartbeat first, then close the dead's calls."""
    nodes = registry_for(settings)
    sweeper = OrphanSweeper(nodes, stores, settings)
    hanging_up = asyncio.create_task(sweeper.hanging_up(), name="ava-orphan-hang-ups")
    task: asyncio.Task[None] | None = None
    try:
        try:
            await nodes.beat()
            closed = await sweeper.sweep(startup=True)
            if closed:
                log.warning("closed %d calls left in progress by stopped processes", len(closed))
        except NodesUnavailable as exc:
            # Starting without knowing who is alive is safe (nothing is closed); refusing to
            # start because Redis blipped would turn a Redis outage into an AVA outage.
            log.warning("node registry unavailable at startup, orphans not swept: %s", exc)
        # Alone, there is nobody else to die: the startup sweep was all there is to do.
        if nodes.shared:
            task = asyncio.create_task(sweeper.run(), name="ava-node")
        yield nodes
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not hanging_up.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sweeper.hung_up(), _HANG_UP_GRACE_SECONDS)
        hanging_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hanging_up
        await nodes.leave()
        await nodes.aclose()

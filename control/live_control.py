"""Live call control on any node: a command reaches the session wherever the call is held.

The call's record names its node (`node_id`, written when the media stream starts). A call
live in this process is acted on directly; a call held by another node is sent there over the
control bus (`control.control_bus`: Redis pub/sub), and the API answers with the owner's outcome
within `control_timeout_seconds`, or with a 504 that says the owner is not answering. The
tenant was checked against the record before anything is sent; the owner checks it again
against the session, so a command can only ever reach the tenant's own call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError

from control.calls import CallManager
from control.control_bus import ControlBus, ControlRequest, LocalBus, RedisBus
from control.control_commands import (
    ControlOutcome,
    NodeCommand,
    apply_command,
    dump_command,
    parse_command,
)
from control.settings import Settings
from storage import CallRecord

__all__ = ["LiveControl", "bus_for", "running_control"]

_LISTEN_AT_START_SECONDS = 1.0


class LiveControl:
    def __init__(self, node_id: str, calls: CallManager, bus: ControlBus, timeout: float) -> None:
        self.node_id = node_id
        self.calls = calls
        self.bus = bus
        self.timeout = timeout

    def here(self, call_id: str, tenant_id: str, command: NodeCommand) -> ControlOutcome | None:
        """The outcome on this process's session of the call; None: it is not live here."""
        session = self.calls.live.get(call_id)
        if session is None or session.metadata.get("tenant_id", "") != tenant_id:
            return None
        return apply_command(session, command)

    async def send(self, record: CallRecord, command: NodeCommand) -> ControlOutcome:
        """Carry out `command` on the call of `record` (the tenant's, already checked)."""
        tenant_id = record.tenant_id or ""
        outcome = self.here(record.id, tenant_id, command)
        if outcome is not None:
            return outcome
        if record.status == "ended":
            return ControlOutcome(409, f"call {record.id} has ended")
        node = record.node_id
        if record.status in ("queued", "ringing"):
            return ControlOutcome(
                409, f"call {record.id} is not connected yet (it is {record.status})"
            )
        if record.status != "in-progress" or not node:
            return ControlOutcome(409, f"call {record.id} is not live on any node")
        if node == self.node_id:  # ended here a moment ago; the record is being written
            return ControlOutcome(409, f"call {record.id} has ended")
        request = ControlRequest(record.id, tenant_id, dump_command(command))
        return await self.bus.request(node, request, self.timeout)

    def handle(self, request: ControlRequest) -> ControlOutcome:
        """A command sent to this node by another one."""
        try:
            command = parse_command(request.command, internal=True)
        except (ValidationError, ValueError) as exc:
            return ControlOutcome(422, f"the command was refused by node {self.node_id}: {exc}")
        outcome = self.here(request.call_id, request.tenant_id, command)
        if outcome is None:
            return ControlOutcome(409, f"call {request.call_id} has ended")
        return outcome


def bus_for(settings: Settings, node_id: str) -> ControlBus:
    if settings.redis_url:
        return RedisBus(settings.redis_url, node_id, ttl_seconds=settings.node_ttl_seconds)
    return LocalBus()


@asynccontextmanager
async def running_control(
    settings: Settings, node_id: str, calls: CallManager
) -> AsyncIterator[LiveControl]:
    """Live control for the app's lifetime; with Redis, this node listens for commands."""
    bus = bus_for(settings, node_id)
    live = LiveControl(node_id, calls, bus, settings.control_timeout_seconds)
    task = asyncio.create_task(bus.run(live.handle), name="ava-control") if bus.shared else None
    if isinstance(bus, RedisBus):
        # Reachable before the server says it is ready; a Redis outage must not stop it starting
        # (the listener keeps trying).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LISTEN_AT_START_SECONDS):
                await bus.listening.wait()
    try:
        yield live
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.aclose()

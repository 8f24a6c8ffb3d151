"""Calls whose process is gone: found by the node that ran them, closed once.

Every call row written by a running call carries its node's id (`CallRecorder(node_id=…)`).
`nodes_with_unfinished_calls` lists the nodes that hold unfinished calls; the sweeper asks the
node registry which of them are dead and closes theirs with `close_calls_of`, which returns the
calls it ended so that their Twilio legs can be hung up. The update only touches rows that are
still unfinished, so a call whose own node ended it a moment earlier keeps its real reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.tables import CallRow, utcnow

__all__ = ["NODE_DIED_REASON", "OrphanCall", "OrphanStore"]

# Calls no process runs: ended ones, and scheduled ones (no node holds them until one places
# them; a scheduler on any node will).
_NOT_RUNNING = ("ended", "scheduled")

# The process running the call died (or lost its heartbeat) before the call ended.
NODE_DIED_REASON = "call.in-progress.error-server-died"


@dataclass(frozen=True, slots=True)
class OrphanCall:
    id: str
    tenant_id: str | None
    phone_number_id: str | None
    twilio_call_sid: str | None
    node_id: str | None


class OrphanStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def nodes_with_unfinished_calls(self) -> set[str | None]:
        """Node ids holding calls that have not ended (None: rows no node has claimed, such as
        an outbound call still ringing, or rows written before nodes had ids)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(CallRow.node_id).where(CallRow.status.not_in(_NOT_RUNNING)).distinct()
            )
            return set(rows)

    async def close_calls_of(
        self, node_id: str | None, *, reason: str = NODE_DIED_REASON, detail: str = ""
    ) -> list[OrphanCall]:
        """End every unfinished call of `node_id` (None: of no node); returns those ended."""
        owner = CallRow.node_id.is_(None) if node_id is None else CallRow.node_id == node_id
        unfinished = (CallRow.status.not_in(_NOT_RUNNING), owner)
        async with self._sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(
                        CallRow.id,
                        CallRow.tenant_id,
                        CallRow.phone_number_id,
                        CallRow.twilio_call_sid,
                        CallRow.node_id,
                    )
                    .where(*unfinished)
                    .with_for_update()
                )
            ).all()
            if not rows:
                return []
            ids = [row.id for row in rows]
            await session.execute(
                update(CallRow)
                .where(CallRow.id.in_(ids), *unfinished)
                .values(status="ended", ended_reason=reason, ended_detail=detail, ended_at=utcnow())
            )
        return [OrphanCall(*row) for row in rows]

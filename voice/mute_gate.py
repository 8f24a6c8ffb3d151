"""The assistant's side of a call transport, with a mute switch (`mute-assistant`).

While muted nothing of the assistant's audio is sent; marks still are, so playout keeps its
pace and its bookkeeping: a reply goes on "playing" silently in real time and unmuting resumes
the audio at the point the reply has reached, not where it was when muted.
"""

from __future__ import annotations

from media.audio_format import AudioFormat
from media.transport import CallTransport, InboundEvent

__all__ = ["MuteGate"]


class MuteGate:
    def __init__(self, transport: CallTransport) -> None:
        self.inner = transport
        self.kind = transport.kind
        self.audio_format: AudioFormat = transport.audio_format
        self.muted = False
        self.dropped_bytes = 0  # audio withheld while muted

    async def receive(self) -> InboundEvent:
        return await self.inner.receive()

    async def send_audio(self, audio: bytes) -> None:
        if self.muted:
            self.dropped_bytes += len(audio)
            return
        await self.inner.send_audio(audio)

    async def send_mark(self, name: str) -> None:
        await self.inner.send_mark(name)

    async def send_clear(self) -> None:
        await self.inner.send_clear()

    async def close(self, reason: str) -> None:
        await self.inner.close(reason)

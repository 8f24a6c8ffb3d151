"""Playout: a reply's audio sent paced against the playback clock, a mark after each chunk.

At most `max_ahead_seconds` is queued at the far end (chunk just sent included); each chunk of
`chunk_seconds` is followed by a mark, and the marks' echoes are the truth of what the caller
heard (`PlayoutTracker`). Output can be paused (the caller may be starting to barge in) and is
cleared on a barge-in. One reply plays at a time (`lock`); `playing` is the one on the line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from media.audio_format import AudioFormat
from media.pacing import Pacer, PlayoutTracker
from media.transport import TELEPHONE, CallTransport
from voice.clock import Clock
from voice.reply import Reply

__all__ = ["Playing", "Playout"]


@dataclass(slots=True)
class Playing:
    reply: Reply
    tracker: PlayoutTracker
    first_sent: float | None = None
    all_played: asyncio.Event = field(default_factory=asyncio.Event)


class Playout:
    def __init__(
        self,
        transport: CallTransport,
        clock: Clock,
        *,
        chunk_seconds: float,
        max_ahead_seconds: float,
        audio_format: AudioFormat = TELEPHONE,
    ) -> None:
        self.transport = transport
        self.clock = clock
        self.audio_format = audio_format
        self.chunk_bytes = audio_format.bytes_for(chunk_seconds)
        # At most `max_ahead_seconds` queued at the far end even right after a send: that queue
        # is what the caller still hears after a barge-in pauses the output.
        self.pacer = Pacer(max(0.0, max_ahead_seconds - chunk_seconds))
        self.lock = asyncio.Lock()
        self.playing: Playing | None = None
        self._open = asyncio.Event()
        self._open.set()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def play(
        self, reply: Reply, on_first_audio: Callable[[float], Awaitable[None]]
    ) -> Playing:
        """Send all of the reply's audio, then wait until its last mark has come back.
        `playing` stays set; the caller clears it once it has recorded the reply."""
        clock, transport, pacer = self.clock, self.transport, self.pacer
        playing = Playing(reply, PlayoutTracker())
        self.playing = playing
        pending = b""
        seq = 0
        end_of_audio = False
        while not end_of_audio:
            piece = await reply.audio.get()
            if piece is None:
                end_of_audio = True
            else:
                pending += piece
            while len(pending) >= self.chunk_bytes or (end_of_audio and pending):
                chunk, pending = pending[: self.chunk_bytes], pending[self.chunk_bytes :]
                await self._open.wait()
                await clock.sleep_until(pacer.send_at(clock.now()))
                await self._open.wait()
                now = clock.now()
                seq += 1
                name = f"{reply.index}.{seq}"
                seconds = self.audio_format.seconds(len(chunk))
                await transport.send_audio(chunk)
                await transport.send_mark(name)
                pacer.sent(seconds, now)
                playing.tracker.add_chunk(name, seconds, now)
                if playing.first_sent is None:
                    playing.first_sent = now
                    await on_first_audio(now)
        if seq and not playing.tracker.finished:
            await playing.all_played.wait()
        return playing

    def on_mark(self, name: str) -> None:
        playing = self.playing
        if playing is None or not name.startswith(f"{playing.reply.index}."):
            return  # a mark of a reply that was cleared: it proves nothing was played
        playing.tracker.acknowledge(name, self.clock.now())
        if playing.reply.done and playing.tracker.finished:
            playing.all_played.set()

    def take(self) -> Playing | None:
        """The reply on the line, which stops being on it (a barge-in is cutting it off)."""
        playing, self.playing = self.playing, None
        return playing

    async def clear(self, now: float) -> None:
        """Drop what the far end has queued and start pacing afresh."""
        await self.transport.send_clear()
        self.pacer.reset(now)
        self._open.set()

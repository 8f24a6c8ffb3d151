"""The text of one reply round as the LLM writes it, for a TTS that takes streaming input.

The reply pushes word-boundary pieces; each TTS attempt reads them with its own cursor from the
first piece, so a retry or a fallback voice gets exactly the text the failed attempt got, and a
reader that is cancelled mid-wait (barge-in, a failed socket) leaves the feed intact for the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

__all__ = ["TextFeed"]


class TextFeed:
    """Append-only pieces of text, then `close()`. Bounded by the LLM round it holds (the
    model's `max_tokens`), which the reply keeps in `Reply.text` anyway."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self._pieces: list[str] = []
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._on_request = on_request

    @property
    def pieces(self) -> tuple[str, ...]:
        return tuple(self._pieces)

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, piece: str) -> None:
        if self._closed:
            raise RuntimeError("push() after close()")
        if piece:
            self._pieces.append(piece)
            self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def requested(self) -> None:
        """The TTS asked its service to generate audio: the text it needed has arrived. The
        first call is where the latency breakdown stops charging the LLM."""
        if self._on_request is not None:
            self._on_request()

    def __aiter__(self) -> AsyncGenerator[str, None]:
        return self._read()

    async def _read(self) -> AsyncGenerator[str, None]:
        index = 0
        while True:
            while index < len(self._pieces):
                index += 1
                yield self._pieces[index - 1]
            if self._closed:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

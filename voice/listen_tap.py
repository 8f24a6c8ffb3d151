"""Live listening to a call: its stereo audio fanned out to listeners, each bounded.

A `ListenTap` is a `StereoSink` (voice.recording): the call's `RecordingTransport` writes the
interleaved stereo PCM16 it has made final (caller left, assistant right, exactly as heard) to
it, beside or instead of the recording's spool file. The tap hands each chunk to every
`Listener` at once and never waits: a listener holds at most `max_bytes` not yet taken (about
two seconds of audio), and one that falls further behind is dropped (`overflowed`), its queue
freed. A slow listener therefore costs the call nothing, and the others nothing either.

A listener asks for stereo, or the mono mix (both sides summed and clipped, as the
mono-recording download is: `media.wav_derive.mono_of`), computed once per chunk for all mono
listeners. `relay`, when set, gets every stereo chunk too (the control plane publishes them to
listeners on other nodes); it must not block either.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from media.wav_derive import mono_of
from voice.recording import StereoSink

__all__ = ["ListenTap", "Listener", "StereoTee", "mix_to_mono"]

_STEREO_FRAME = 4  # bytes per stereo sample pair (two 16-bit samples)


def mix_to_mono(stereo: bytes) -> bytes:
    """Interleaved stereo PCM16 → mono PCM16, the two sides summed and clipped."""
    return mono_of(stereo, "mix")


class Listener:
    """One listener's queue: filled by the tap (never blocking), drained by its sender."""

    def __init__(self, max_bytes: int, *, mono: bool = False) -> None:
        self.mono = mono
        self.max_bytes = max_bytes
        self.overflowed = False
        self.ended = False
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ready = asyncio.Event()

    @property
    def queued_bytes(self) -> int:
        return self._size

    def offer(self, pcm: bytes) -> bool:
        """Queue `pcm`; False (and the listener is over) if it would exceed the bound."""
        if self.overflowed or self.ended:
            return not self.overflowed
        if self._size + len(pcm) > self.max_bytes:
            self.overflowed = True
            self._chunks.clear()  # freed now: a dropped listener holds no audio
            self._size = 0
            self._ready.set()
            return False
        self._chunks.append(pcm)
        self._size += len(pcm)
        self._ready.set()
        return True

    def end(self) -> None:
        """No more audio will come (the call ended): what is queued is still handed out."""
        self.ended = True
        self._ready.set()

    def take(self) -> bytes | None:
        """Everything queued, joined (b"" if nothing); None once ended or overflowed and empty."""
        if self.overflowed:
            return None
        if self._chunks:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            return out
        if self.ended:
            return None
        self._ready.clear()
        return b""

    async def next(self) -> bytes | None:
        """The next audio (all that is queued, joined); None when the listener is over."""
        while True:
            out = self.take()
            if out is None or out:
                return out
            await self._ready.wait()


class ListenTap:
    """One call's fan-out to its listeners (a `StereoSink`)."""

    def __init__(
        self, call_id: str, tenant_id: str | None, sample_rate: int, *, max_seconds: float = 2.0
    ) -> None:
        self.call_id = call_id
        self.tenant_id = tenant_id
        self.sample_rate = sample_rate
        # The bound is in stereo bytes; a mono listener's is half (its audio is half as big).
        self.max_bytes = max(_STEREO_FRAME, round(max_seconds * sample_rate) * _STEREO_FRAME)
        self.listeners: set[Listener] = set()
        self.relay: Callable[[bytes], None] | None = None
        # Whether listeners on other nodes want this call (the hub's relay knows).
        self.remote: Callable[[], bool] | None = None
        self.dropped = 0  # listeners dropped for falling behind
        self.closed = False

    def wanted(self) -> bool:
        """Anyone listening, here or on another node (else the call need not make audio)."""
        if self.closed:
            return False
        return bool(self.listeners) or (self.remote is not None and self.remote())

    def listen(self, *, mono: bool = False) -> Listener:
        bound = self.max_bytes // 2 if mono else self.max_bytes
        listener = Listener(bound, mono=mono)
        if self.closed:
            listener.end()
        else:
            self.listeners.add(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def write(self, pcm: bytes) -> None:
        """A chunk of the call's stereo audio; handed to every listener without waiting."""
        if not pcm or self.closed:
            return
        mono: bytes | None = None
        for listener in list(self.listeners):
            if listener.mono:
                mono = mix_to_mono(pcm) if mono is None else mono
                accepted = listener.offer(mono)
            else:
                accepted = listener.offer(pcm)
            if not accepted:
                self.listeners.discard(listener)
                self.dropped += 1
        if self.relay is not None:
            self.relay(pcm)

    def close(self) -> None:
        """The call is over: every listener gets what is queued, then the end."""
        self.closed = True
        for listener in self.listeners:
            listener.end()
        self.listeners.clear()


class StereoTee:
    """A `StereoSink` writing to several (the recording's spool file and the listen tap)."""

    def __init__(self, *sinks: StereoSink) -> None:
        self._sinks = sinks

    def write(self, pcm: bytes) -> None:
        for sink in self._sinks:
            sink.write(pcm)

"""The replies of one call in flight: one handle each, one way to cancel it.

Split from `voice.session` because a reply's life (started in the session's TaskGroup, produced
by the LLM and TTS or from the greeting cache, released, held back while the caller backs off,
played) owns its own state: the live handles, the speculative one, the reply count and the
backoff. The session loop alone calls into it; the reply tasks only post events to the inbox.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from media.audio_format import AudioFormat
from media.transport import TransportClosed
from voice.assistant import Assistant
from voice.clock import Clock
from voice.errors import ProviderError
from voice.fallback import FallbackLlm, FallbackTts, ProvidersExhausted
from voice.greeting import GreetingCache
from voice.playout import Playing, Playout
from voice.reply import Reply
from voice.session_events import Audible, InboxEvent, Played, StageExhausted
from voice.tool_turns import Handoff, ToolTurns
from voice.turns import CommitTurn
from voice.types import ChatMessage, EndedReason

__all__ = ["ReplyHandle", "Replies"]

log = logging.getLogger("ava.call")


@dataclass(eq=False, slots=True)
class ReplyHandle:
    """Everything the session knows about one reply; `cancel()` is its only way out."""

    reply: Reply
    task: asyncio.Task[None] | None = None
    commit: CommitTurn | None = None  # the caller's turn it answers, once confirmed
    ending: tuple[EndedReason, str] | None = None  # end the call once it has been heard
    handoff: Handoff | None = None  # run before ending (a transfer)
    played: Playing | None = None  # played to the end, not yet recorded by the loop
    interruptible: bool = True  # may the caller's speech cut it (a `say` may forbid it)
    cached: bool = True  # a fixed line worth keeping in the greeting cache

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Replies:
    def __init__(
        self,
        *,
        call_id: str,
        assistant: Assistant,
        clock: Clock,
        audio_format: AudioFormat,
        playout: Playout,
        llm: FallbackLlm,
        tts: FallbackTts,
        greetings: GreetingCache,
        tool_turns: ToolTurns,
        task_group: Callable[[], asyncio.TaskGroup | None],
        post: Callable[[InboxEvent], Awaitable[None]],
        finish: Callable[[EndedReason, str], None],
    ) -> None:
        """`task_group`: the session's, where every reply task runs; `finish`: end the call."""
        self.call_id = call_id
        self.assistant = assistant
        self.clock = clock
        self.audio_format = audio_format
        self._playout = playout
        self._llm = llm
        self._tts = tts
        self._greetings = greetings
        self._tool_turns = tool_turns
        self._task_group = task_group
        self._post = post
        self._finish = finish
        self.live: dict[Reply, ReplyHandle] = {}
        self.speculative: ReplyHandle | None = None
        self.count = 0  # replies started so far: the next one's index
        self.backoff_until = 0.0  # no reply starts playing before (the caller may go on)

    def start(self, user_text: str, messages: list[ChatMessage] | None) -> ReplyHandle:
        tg = self._task_group()
        assert tg is not None
        self.count += 1
        reply = Reply(self.count, user_text, self.clock, audio_format=self.audio_format)
        handle = ReplyHandle(reply)
        self.live[reply] = handle
        handle.task = tg.create_task(self._run(handle, messages))
        return handle

    def start_fixed_line(
        self, text: str, ending: tuple[EndedReason, str] | None = None, *, cache: bool = True
    ) -> ReplyHandle:
        """A line said from the greeting cache (greeting, apology, failed transfer); `cache`:
        False for a line of one call (a `say`), synthesized but not kept."""
        handle = self.start("", None)
        handle.reply.text = text
        handle.ending = ending
        handle.cached = cache
        handle.reply.release()
        return handle

    def cancel(self, handle: ReplyHandle) -> None:
        self.live.pop(handle.reply, None)
        handle.cancel()
        if handle.ending is not None:
            # Its words were to end the call (apology, goodbye): nothing else will, so end now.
            self._finish(*handle.ending)

    def cancel_speculation(self) -> None:
        if self.speculative is not None:
            self.cancel(self.speculative)
            self.speculative = None

    async def _run(self, handle: ReplyHandle, messages: list[ChatMessage] | None) -> None:
        try:
            await self._play(handle, messages)
        except* TransportClosed:
            # The line went while the reply played (the caller hung up, or the stream was
            # refused): not a failure of the call. The transport reader sees the same close
            # and ends the call with its reason; what was heard is kept by the ending.
            log.debug(
                "call %s: reply %d stopped, the line is closed", self.call_id, handle.reply.index
            )

    async def _play(self, handle: ReplyHandle, messages: list[ChatMessage] | None) -> None:
        reply = handle.reply
        async with asyncio.TaskGroup() as tg:
            if messages is None:
                tg.create_task(self._produce_fixed_line(handle))
            else:
                tg.create_task(self._produce(reply, messages))
            await reply.released.wait()
            reply.timings.held_until = self.backoff_until  # the backoff is not server time
            await self.clock.sleep_until(self.backoff_until)
            async with self._playout.lock:
                playing = await self._playout.play(
                    reply, functools.partial(self._post_audible, reply)
                )
                self._playout.playing = None
                handle.played = playing
        await self._post(Played(playing))

    async def _post_audible(self, reply: Reply, at: float) -> None:
        await self._post(Audible(reply, at))

    async def _produce_fixed_line(self, handle: ReplyHandle) -> None:
        """Fixed lines (greeting, apology): from the cache, synthesized once per voice."""
        reply = handle.reply
        try:
            personal = reply.is_greeting and self.assistant.personal_greeting
            cached = await self._greetings.get_or_synthesize(
                self._tts, reply.text, self.audio_format, keep=handle.cached and not personal
            )
        except ProviderError as exc:
            if handle.ending is not None and handle.handoff is None:
                self._finish(*handle.ending)  # not even the apology can be said: just end
                return
            if handle.ending is None and isinstance(exc, ProvidersExhausted):
                await self._post(StageExhausted(exc.stage, exc))
            # Nothing was heard (no message is recorded); what was to follow it (a transfer)
            # follows at once.
            reply.text = ""
            await reply.finish()
            return
        reply.spoken_text = reply.text
        await reply.put_audio(cached.audio, cached.words)
        await reply.finish()

    async def _produce(self, reply: Reply, messages: list[ChatMessage]) -> None:
        try:
            if self._tool_turns.tools.schemas:
                await self._tool_turns.produce(reply, self._llm, self._tts, messages)
            else:
                await reply.produce(self._llm, self._tts, messages)
        except ProvidersExhausted as exc:
            await reply.finish()
            await self._post(StageExhausted(exc.stage, exc))
        except ProviderError as exc:
            # Failed after part of the answer was produced (already a ProviderFailed event):
            # the caller hears that part and the call goes on.
            log.warning("call %s: reply %d cut short: %s", self.call_id, reply.index, exc)
            if not reply.done:
                await reply.finish()

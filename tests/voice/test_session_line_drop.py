"""The line drops while the assistant speaks (the caller hung up without a `stop`, or the
stream was refused): the reply's next send fails with `TransportClosed`. That is the caller
leaving, not a server failure: the call ends `customer-ended-call`, and what the caller heard of
the reply is kept. Real session, Silero VAD, real speech, virtual time (tests/voice/sim_kit.py).
"""

from __future__ import annotations

import asyncio

import pytest

from media.transport import TransportClosed
from tests.voice.sim_kit import LLM_FIRST_TOKEN, TTS_FIRST_BYTE, clip, line
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.engines.models import silero_vad_path
from voice.engines.silero import SileroVad
from voice.events import CallEnded, MessageAdded
from voice.greeting import GreetingCache
from voice.session import CallSession, Engines
from voice.simulation import Line, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ToneTts
from voice.types import EndedReason

pytestmark = pytest.mark.timeout(60)

QUESTION = "What time do you open on Saturday?"
LONG = (
    "Sure, I can help you with that. Our clinic offers cleanings, fillings, crowns, whitening "
    "and emergency care, and we take most insurance plans, so let me walk you through each."
)


class DroppingPhone(SimulatedPhone):
    """A phone whose line can drop: afterwards every send fails as a dead socket's does."""

    def __init__(self, *, malformed: bool = False, reader_delay: float = 0.2) -> None:
        super().__init__()
        self.malformed = malformed
        self.reader_delay = reader_delay
        self.dropped = False
        self.sends_refused = 0

    def drop_line(self) -> None:
        # A dead socket fails the next send at once; the reader learns of it a little later
        # (its receive is already waiting), so the reply's send sees the close first.
        self.dropped = True
        asyncio.get_running_loop().call_later(self.reader_delay, self.drop)

    def _refuse(self) -> None:
        if self.dropped:
            self.sends_refused += 1
            raise TransportClosed("socket closed while sending", malformed=self.malformed)

    async def send_audio(self, audio: bytes) -> None:
        self._refuse()
        await super().send_audio(audio)

    async def send_mark(self, name: str) -> None:
        self._refuse()
        await super().send_mark(name)

    async def send_clear(self) -> None:
        self._refuse()
        await super().send_clear()


def _started(
    phone: SimulatedPhone, lines: list[Line]
) -> tuple[CallSession, asyncio.Task[CallEnded], RecordingSink]:
    engines = Engines(
        stt=ListeningStt(lines),
        llm=ScriptedLlm([LONG, "Sure."], first_token=LLM_FIRST_TOKEN, per_token=0.02),
        tts=ToneTts(seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE),
        vad=SileroVad(silero_vad_path()),
        turn_detector=None,
        greetings=GreetingCache(),
    )
    sink = RecordingSink()
    session = CallSession(
        call_id="drop",
        assistant=Assistant.model_validate({}),
        transport=phone,
        engines=engines,
        sink=sink,
        clock=LoopClock(),
    )
    return session, asyncio.create_task(session.run()), sink


def test_a_line_that_drops_mid_reply_ends_the_call_as_the_caller_leaving() -> None:
    question, lines = clip(QUESTION), [line(QUESTION)]

    async def main() -> tuple[EndedReason, list[MessageAdded], int]:
        phone = DroppingPhone()
        session, task, sink = _started(phone, lines)
        await phone.pause(0.5)
        await phone.say(question)
        await phone.pause(2.8)  # the long answer (~10 s of audio) is playing
        assert phone.hearing(asyncio.get_running_loop().time())
        phone.drop_line()
        ended = await asyncio.wait_for(task, 5)
        said = [e for e in sink.of_type(MessageAdded) if isinstance(e, MessageAdded)]
        return ended.reason, said, phone.sends_refused

    reason, said, refused = run_virtual(main())
    assert reason is EndedReason.CUSTOMER_ENDED_CALL  # not call.in-progress.error-server
    bot = [m.content for m in said if m.role == "bot"]
    assert bot and LONG.startswith(bot[-1]) and bot[-1] != LONG  # the part heard, cut short


def test_a_barge_in_on_a_line_refused_meanwhile_ends_the_call_as_malformed() -> None:
    # The caller cuts in just as the stream is refused (bad input): the session's `clear`
    # meets the closed line before the reader reports it. The call ends with the reason the
    # transport gave (malformed stream), not as a server failure.
    question, stop = clip(QUESTION), clip("Wait, stop, stop.")
    lines = [line(QUESTION), line("Wait, stop, stop.")]

    async def main() -> tuple[EndedReason, int]:
        phone = DroppingPhone(malformed=True, reader_delay=1.0)
        session, task, _ = _started(phone, lines)
        await phone.pause(0.5)
        await phone.say(question)
        await phone.pause(2.8)
        phone.drop_line()
        await phone.say(stop)  # frames queued before the reader learns of the close
        ended = await asyncio.wait_for(task, 5)
        return ended.reason, phone.sends_refused

    reason, refused = run_virtual(main())
    assert refused >= 1
    assert reason is EndedReason.MALFORMED_STREAM

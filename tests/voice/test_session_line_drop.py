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
from voice.events import MessageAdded
from voice.greeting import GreetingCache
from voice.session import CallSession, Engines
from voice.simulation import ListeningStt, SimulatedPhone, run_virtual
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

    def __init__(self) -> None:
        super().__init__()
        self.dropped = False
        self.sends_refused = 0

    def drop_line(self) -> None:
        # A dead socket fails the next send at once; the reader learns of it a little later
        # (its receive is already waiting), so the reply's send sees the close first.
        self.dropped = True
        asyncio.get_running_loop().call_later(0.2, self.drop)

    def _refuse(self) -> None:
        if self.dropped:
            self.sends_refused += 1
            raise TransportClosed("socket closed while sending")

    async def send_audio(self, audio: bytes) -> None:
        self._refuse()
        await super().send_audio(audio)

    async def send_mark(self, name: str) -> None:
        self._refuse()
        await super().send_mark(name)

    async def send_clear(self) -> None:
        self._refuse()
        await super().send_clear()


def test_a_line_that_drops_mid_reply_ends_the_call_as_the_caller_leaving() -> None:
    question = clip(QUESTION)

    async def main() -> tuple[EndedReason, list[MessageAdded], int]:
        phone = DroppingPhone()
        engines = Engines(
            stt=ListeningStt([line(QUESTION)]),
            llm=ScriptedLlm([LONG], first_token=LLM_FIRST_TOKEN, per_token=0.02),
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
        task = asyncio.create_task(session.run())
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

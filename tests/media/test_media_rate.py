"""MediaRateGuard: Twilio's own cadence (20 ms frames, jitter, a stall and its catch-up) never
trips it; audio faster than real time beyond the burst does. Fed with the captured `media`
fixture through TwilioStream, on an injected clock."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from media.rate_guard import MediaRateExceeded, MediaRateGuard
from media.transport import AudioReceived
from media.twilio.protocol import TwilioStream

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "twilio"
BURST = 2.0
FRAME_SECONDS = 0.02


MEDIA = json.loads((FIXTURES / "media.json").read_text())


def media_text(seq: int) -> str:
    """The captured `media` message (160 bytes of μ-law) as frame `seq` of the stream."""
    message = {**MEDIA, "media": dict(MEDIA["media"])}
    message["sequenceNumber"] = str(seq + 2)
    message["media"]["chunk"] = str(seq + 1)
    message["media"]["timestamp"] = str(seq * 20)
    return json.dumps(message)


class Stream:
    """A TwilioStream after `start`, with the guard applied as the websocket shell does."""

    def __init__(self, burst: float = BURST) -> None:
        self.protocol = TwilioStream()
        self.guard = MediaRateGuard(burst)
        self.protocol.receive_text((FIXTURES / "start.json").read_text())
        self.frames = 0

    def receive(self, now: float) -> None:
        for event in self.protocol.receive_text(media_text(self.frames)):
            assert isinstance(event, AudioReceived) and len(event.audio) == 160
            self.guard.receive(len(event.audio), now)
        self.frames += 1


def twilio_arrivals(seconds: float, seed: int) -> Iterator[float]:
    """Arrival times of a real stream: one frame per 20 ms, each delayed by network jitter
    (mostly a few ms, sometimes 150 ms, so frames bunch up), plus a 1.5 s stall whose frames
    all arrive together when it ends. Never earlier than the frame was spoken."""
    rng = random.Random(seed)
    stall_at, stall = seconds / 2, 1.5
    last = 0.0
    for i in range(int(seconds / FRAME_SECONDS)):
        spoken = i * FRAME_SECONDS
        delay = rng.expovariate(1 / 0.008) + (0.15 if rng.random() < 0.02 else 0.0)
        arrival = spoken + delay
        if stall_at <= spoken < stall_at + stall:
            arrival = stall_at + stall + rng.uniform(0, 0.01)
        last = max(last, arrival)  # TCP keeps the order
        yield last


@pytest.mark.parametrize("seed", range(3))
def test_twilio_cadence_with_jitter_and_a_stall_never_trips(seed: int) -> None:
    stream = Stream()
    arrivals = list(twilio_arrivals(60.0, seed))
    for now in arrivals:
        stream.receive(now)
    assert stream.frames == 3000
    assert stream.guard.received_seconds == pytest.approx(60.0)
    # The furthest ahead it got: the first frame itself (its 20 ms counts at once).
    assert stream.guard.ahead(arrivals[-1]) < 0.1


def test_a_stream_that_starts_late_and_catches_up_passes() -> None:
    """Twilio's first frames can be held up; the backlog then comes at once."""
    stream = Stream()
    for i in range(100):  # 2 s of audio delayed 1 s: 100 frames within 10 ms
        stream.receive(1.0 + i * 0.0001)
    for i in range(100, 500):
        stream.receive(i * FRAME_SECONDS + 0.005)


def test_sixty_seconds_at_once_trips_just_past_the_burst() -> None:
    stream = Stream()
    with pytest.raises(MediaRateExceeded) as refused:
        for i in range(3000):
            stream.receive(0.0001 * i)
    # Refused on the frame that put it more than 2 s ahead: the 101st (2.02 s of audio).
    assert stream.frames == 100
    assert "faster than real time: 2.02 s of audio in 0.01 s" in refused.value.reason
    assert "burst allowed: 2 s" in refused.value.reason


def test_a_slightly_fast_stream_trips_once_its_lead_passes_the_burst() -> None:
    stream = Stream()
    speed = 1.1  # 22 ms of audio every 20 ms: 0.1 s ahead per second
    with pytest.raises(MediaRateExceeded):
        for i in range(5000):
            stream.receive(i * FRAME_SECONDS / speed)
    elapsed = stream.frames * FRAME_SECONDS / speed
    assert 19.0 < elapsed < 21.0  # 2 s lead after ~20 s


def test_the_burst_is_configurable() -> None:
    tight, loose = Stream(burst=0.5), Stream(burst=5.0)
    with pytest.raises(MediaRateExceeded):
        for _ in range(100):
            tight.receive(0.0)
    assert tight.frames == 25  # 0.52 s > 0.5 s
    for _ in range(250):
        loose.receive(0.0)


def test_time_going_backwards_cannot_buy_allowance() -> None:
    guard = MediaRateGuard(BURST)
    guard.receive(160, 10.0)
    assert guard.ahead(5.0) == pytest.approx(0.02)  # elapsed is never negative
    with pytest.raises(ValueError):
        MediaRateGuard(0)


def test_a_server_that_reads_late_does_not_take_its_backlog_for_a_flood() -> None:
    """A busy server gets round to the socket 3 s after accepting it: 3 s of honest audio are
    waiting. Counted from the accept they are real time; counted from the first frame read
    (as before) they looked like 3 s of audio in no time, and the call was refused."""
    opened = 10.0
    guard = MediaRateGuard(BURST, opened_at=opened)
    for i in range(150):  # 3 s sent from the accept on, all read at 13.0
        guard.receive(160, opened + 3.0 + i * 0.00001)
    for i in range(150, 500):  # then on time
        guard.receive(160, opened + i * FRAME_SECONDS + 0.005)
    late = MediaRateGuard(BURST)  # no accept time: the first frame read is the start
    with pytest.raises(MediaRateExceeded):
        for i in range(150):
            late.receive(160, opened + 3.0 + i * 0.00001)


def test_counting_from_the_accept_still_refuses_a_flood() -> None:
    guard = MediaRateGuard(BURST, opened_at=0.0)
    with pytest.raises(MediaRateExceeded):
        for i in range(3000):  # 60 s of audio within 0.3 s of the accept
            guard.receive(160, 0.0001 * i)

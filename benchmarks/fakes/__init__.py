"""Protocol-faithful fake provider servers on loopback, for the tests and the benchmarks.

Each fake is a Starlette app with a small config dataclass (latencies, a script, faults) and
records what it received; run it with `serve(fake.app)`.
"""

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.openai import FakeToolCall, OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import Fault, serve, speech_like_ulaw, ws_url

__all__ = [
    "DeepgramFake",
    "DeepgramFakeConfig",
    "ElevenLabsFake",
    "ElevenLabsFakeConfig",
    "FakeToolCall",
    "Fault",
    "OpenAiFake",
    "OpenAiFakeConfig",
    "serve",
    "speech_like_ulaw",
    "ws_url",
]

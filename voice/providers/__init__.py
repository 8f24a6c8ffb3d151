"""Cloud provider adapters: each implements a port of `voice.ports` over a vendor's wire protocol.

Every adapter takes its key, base URL and options as constructor arguments (never the environment)
and converts its transport's exceptions into `voice.errors` at its boundary.
"""

from voice.providers.deepgram import DeepgramStream, DeepgramStt
from voice.providers.elevenlabs import ElevenLabsTts
from voice.providers.openai_llm import OpenAiLlm
from voice.providers.openai_tts import OpenAiTts
from voice.providers.options import ElevenLabsVoiceSettings, ReconnectPolicy, StageTimeouts

__all__ = [
    "DeepgramStream",
    "DeepgramStt",
    "ElevenLabsTts",
    "ElevenLabsVoiceSettings",
    "OpenAiLlm",
    "OpenAiTts",
    "ReconnectPolicy",
    "StageTimeouts",
]

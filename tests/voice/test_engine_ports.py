"""The offline engines satisfy the call loop's ports (checked by mypy, smoke-run by pytest)."""

from __future__ import annotations

from voice.engines import PiperEngine, SileroVad, SmartTurn, WebRtcVad, WhisperEngine
from voice.ports import SpeechToText, SttStream, TextToSpeech, TurnDetector, VadModel, VadStream


async def test_engines_satisfy_the_ports(
    piper_engine: PiperEngine,
    whisper_engine: WhisperEngine,
    silero_vad: SileroVad,
    smart_turn_model: SmartTurn,
) -> None:
    tts: TextToSpeech = piper_engine.tts()
    stt: SpeechToText = whisper_engine.stt()
    vads: list[VadModel] = [silero_vad, WebRtcVad()]
    streams: list[VadStream] = [vad.stream() for vad in vads]
    turn: TurnDetector = smart_turn_model
    stream: SttStream = await stt.connect()
    await stream.aclose()
    assert tts.voice_key and len(streams) == 2 and turn is smart_turn_model

"""Offline speech engines: Silero/WebRTC VAD, smart-turn, Piper TTS and faster-whisper STT.

Models load once per process (see `models` for where they come from and how they are verified);
each call gets small per-call stream objects. CPU-heavy inference runs in a shared, bounded
executor, never on the event loop.
"""

from voice.engines.executor import inference_executor, load_onnx_session
from voice.engines.models import (
    piper_voice_files,
    silero_vad_path,
    smart_turn_path,
    verify_file,
    whisper_model_dir,
)
from voice.engines.piper_tts import PiperEngine, PiperTts
from voice.engines.silero import SileroVad, SileroVadStream
from voice.engines.smart_turn import SmartTurn
from voice.engines.webrtc_vad import WebRtcVad, WebRtcVadStream
from voice.engines.whisper_stt import WhisperEngine, WhisperStt, WhisperSttStream

__all__ = [
    "PiperEngine",
    "PiperTts",
    "SileroVad",
    "SileroVadStream",
    "SmartTurn",
    "WebRtcVad",
    "WebRtcVadStream",
    "WhisperEngine",
    "WhisperStt",
    "WhisperSttStream",
    "inference_executor",
    "load_onnx_session",
    "piper_voice_files",
    "silero_vad_path",
    "smart_turn_path",
    "verify_file",
    "whisper_model_dir",
]

"""Synthesize caller speech (for `ava call`, tests and benchmarks) with the offline Piper voice."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from voice.engines import PiperEngine, piper_voice_files

__all__ = ["synthesize_ulaw"]


def synthesize_ulaw(texts: list[str], engine: PiperEngine | None = None) -> list[bytes]:
    """μ-law 8 kHz audio of each text (blocking; loads the voice if no engine is given).
    Deterministic (no sampling noise): the same text is the same audio in every run, so a test
    or benchmark that passes once passes again, and a failure can be replayed."""
    executor: ThreadPoolExecutor | None = None
    if engine is None:
        executor = ThreadPoolExecutor(1)
        model_path, config_path = piper_voice_files()
        engine = PiperEngine(model_path, config_path, executor)

    async def run(piper: PiperEngine) -> list[bytes]:
        tts = piper.tts(noise_scale=0.0, noise_w_scale=0.0)
        clips = []
        for text in texts:
            audio = bytearray()
            async for chunk in tts.synthesize(text):
                audio += chunk.audio
            clips.append(bytes(audio))
        return clips

    try:
        return asyncio.run(run(engine))
    finally:
        if executor is not None:
            executor.shutdown()

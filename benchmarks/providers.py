"""The provider fakes for a benchmark, in their own process, with the benchmark's set latencies.

`python -m benchmarks.providers SCRIPT.json` serves the Deepgram, OpenAI and ElevenLabs fakes on
loopback and prints one JSON line with their base URLs; it runs until its stdin closes (the parent
went away) or SIGTERM. The parent side is `run_providers()`. A process of their own keeps their
CPU out of both the server's and the callers' numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import serve, ws_url
from benchmarks.server import ProcessUsage, process_usage
from media.g711 import ulaw_to_float

__all__ = ["API_KEY", "LATENCIES", "ProviderUrls", "cloud_assistant", "run_providers"]

API_KEY = "bench-key"
# The default profile (issue 5): STT final 150 ms after end of speech, LLM first token 300 ms
# then 40 tokens/s, TTS first byte 150 ms.
LATENCIES = {"stt_final": 0.15, "llm_first_token": 0.3, "llm_tokens_per_second": 40.0, "tts": 0.15}
GREETING = "Hello, this is Ava. How can I help you today?"


def cloud_assistant(*, speculative: bool = True) -> dict[str, Any]:
    """The benchmark's assistant on the cloud path: Deepgram → OpenAI → ElevenLabs."""
    return {
        "startSpeakingPlan": {"speculative": speculative},
        "name": "AVA bench",
        "firstMessage": GREETING,
        "firstMessageMode": "assistant-speaks-first",
        "model": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are Ava, a receptionist."}],
        },
        "voice": {"provider": "11labs", "voiceId": "bench-voice"},
        "transcriber": {"provider": "deepgram", "model": "nova-3"},
        "silenceTimeoutSeconds": 60,
        "maxDurationSeconds": 600,
    }


@dataclass(frozen=True, slots=True)
class ProviderUrls:
    deepgram: str  # ws://127.0.0.1:port
    openai: str  # http://127.0.0.1:port/v1
    elevenlabs: str  # ws://127.0.0.1:port
    pid: int

    def usage(self) -> ProcessUsage:
        return process_usage(self.pid)

    def ava_env(self) -> dict[str, str]:
        return {
            "DEEPGRAM_API_KEY": API_KEY,
            "DEEPGRAM_BASE_URL": self.deepgram,
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": self.openai,
            "ELEVENLABS_API_KEY": API_KEY,
            "ELEVENLABS_BASE_URL": self.elevenlabs,
        }


def spoken_seconds(ulaw: bytes, threshold: float = DeepgramFakeConfig.speech_rms) -> float:
    """First to last voiced 20 ms frame, by the Deepgram fake's own energy detector."""
    frames = len(ulaw) // 160
    if not frames:
        return 0.0
    samples = ulaw_to_float(ulaw[: frames * 160]).reshape(frames, 160)
    voiced = np.flatnonzero(np.sqrt(np.mean(samples * samples, axis=1)) >= threshold)
    return 0.0 if not len(voiced) else (int(voiced[-1]) + 1 - int(voiced[0])) * 0.02


async def _serve(script: list[str], seconds: list[float] | None) -> None:
    deepgram = DeepgramFake(
        DeepgramFakeConfig(
            api_key=API_KEY,
            script=script,
            final_delay=LATENCIES["stt_final"],
            script_per_connection=True,
            utterance_gap=0.5,
            script_seconds=seconds,
            idle_timeout=60.0,
        )
    )
    chat = OpenAiFake(
        OpenAiFakeConfig(
            api_key=API_KEY,
            first_token_latency=LATENCIES["llm_first_token"],
            tokens_per_second=LATENCIES["llm_tokens_per_second"],
        )
    )
    eleven = ElevenLabsFake(
        ElevenLabsFakeConfig(
            api_key=API_KEY, first_byte_latency=LATENCIES["tts"], inactivity_timeout=60.0
        )
    )
    # The fakes record what they receive (for tests); a long sweep must not grow without bound.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    async with contextlib.AsyncExitStack() as stack:
        dg = await stack.enter_async_context(serve(deepgram.app))
        oa = await stack.enter_async_context(serve(chat.app))
        el = await stack.enter_async_context(serve(eleven.app))
        urls = {"deepgram": ws_url(dg), "openai": f"{oa}/v1", "elevenlabs": ws_url(el)}
        print(json.dumps(urls), flush=True)  # noqa: T201 - the parent reads this
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            _forget(deepgram, chat, eleven)


def _forget(deepgram: DeepgramFake, chat: OpenAiFake, eleven: ElevenLabsFake) -> None:
    """Drop the fakes' request records (kept for tests) so memory stays flat over a sweep."""
    del deepgram.connections[:-16]
    del chat.chat_requests[:-16], chat.speech_requests[:-16], chat.speech_bytes_sent[:-16]
    del eleven.messages[:-64], eleven.contexts[:-64], eleven.query[:-16]


@contextlib.asynccontextmanager
async def run_providers(
    script: Sequence[str],
    *,
    work_dir: Path,
    cpu: int | None = None,
    utterance_files: Sequence[str] = (),
) -> AsyncIterator[ProviderUrls]:
    """Start the fakes process (pinned to `cpu` if given); yields their URLs.

    `utterance_files` (the script said as μ-law) let the STT fake split a sentence's words
    across the finals its pauses produce."""
    script_file = work_dir / "stt-script.json"
    audio = [await asyncio.to_thread(Path(f).read_bytes) for f in utterance_files]
    seconds = [spoken_seconds(a) for a in audio] or None
    spec = {"script": list(script), "seconds": seconds}
    await asyncio.to_thread(script_file.write_text, json.dumps(spec))
    command = [sys.executable, "-m", "benchmarks.providers", str(script_file)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    log = (work_dir / "providers.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"provider fakes did not start (see {work_dir / 'providers.log'})")
        urls = json.loads(line)
        yield ProviderUrls(urls["deepgram"], urls["openai"], urls["elevenlabs"], process.pid)
    finally:
        process.stdin.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop

        uvloop.run(_serve(spec["script"], spec["seconds"]))
    except ImportError:
        asyncio.run(_serve(spec["script"], spec["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

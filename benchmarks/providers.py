"""The provider fakes for a benchmark, in their own process, with the benchmark's set latencies.

`python -m benchmarks.providers SCRIPT.json` serves the Deepgram, OpenAI and ElevenLabs fakes on
loopback and prints one JSON line with their base URLs; it runs until its stdin closes (the parent
went away) or SIGTERM. The parent side is `run_providers()`. A process of their own keeps their
CPU out of both the server's and the callers' numbers.

The fake LLM answers as a support desk would (`support_desk_reply`: first clauses of 8+ words,
streamed in sub-word tokens), not "You said: …", whose two-token first clause would hide what
clause chunking costs. With `llm_log` every chat request is appended to a JSON-lines file (wall
time, the caller's last words, the reply given): the turn-taking benchmark reads when the LLM was
asked from it, for AVA and for a peer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.openai import (
    OpenAiFake,
    OpenAiFakeConfig,
    Reply,
    echo_reply,
    support_desk_reply,
)
from benchmarks.fakes.server import serve, ws_url
from benchmarks.server import ProcessUsage, process_usage
from media.g711 import ulaw_to_float

__all__ = [
    "API_KEY",
    "LATENCIES",
    "ProviderUrls",
    "SttScript",
    "cloud_assistant",
    "read_llm_log",
    "run_providers",
    "spoken_seconds",
]

API_KEY = "bench-key"
# The cloud profile (issues 5 and 10): STT final 150 ms after end of speech, LLM first token
# 300 ms then 50 tokens/s, TTS first byte 150 ms.
LATENCIES = {"stt_final": 0.15, "llm_first_token": 0.3, "llm_tokens_per_second": 50.0, "tts": 0.15}
REPLIES = {"support": support_desk_reply, "echo": echo_reply}


@dataclass(frozen=True, slots=True)
class SttScript:
    """What the STT fake hears the callers say, line by line (each call walks it from the top).

    `seconds`: each line's spoken length; `word_times`: for each line, the voiced seconds by which
    each word is heard (see `DeepgramFakeConfig`); `utterance_gap`: silence that separates lines."""

    lines: list[str]
    seconds: list[float] | None = None
    word_times: list[list[float]] | None = None
    utterance_gap: float = 0.5


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


def _logged(
    reply: Callable[[list[dict[str, Any]]], Reply], log: TextIO
) -> Callable[[list[dict[str, Any]]], Reply]:
    def answer(messages: list[dict[str, Any]]) -> Reply:
        given = reply(messages)
        user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        text = given if isinstance(given, str) else None
        entry = {"t": time.time(), "user": user.get("content"), "reply": text}
        log.write(json.dumps(entry) + "\n")
        log.flush()  # the parent reads it while this process still runs
        return given

    return answer


def read_llm_log(path: Path) -> list[dict[str, Any]]:
    """The chat requests the fake LLM received: `t` (time.time()), `user`, `reply`."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _serve(spec: dict[str, Any], log: TextIO | None) -> None:
    deepgram = DeepgramFake(
        DeepgramFakeConfig(
            api_key=API_KEY,
            script=spec["script"],
            final_delay=LATENCIES["stt_final"],
            script_per_connection=True,
            utterance_gap=spec.get("utteranceGap", 0.5),
            script_seconds=spec.get("seconds"),
            script_word_times=spec.get("wordTimes"),
            idle_timeout=60.0,
        )
    )
    reply = REPLIES[spec.get("reply", "support")]
    chat = OpenAiFake(
        OpenAiFakeConfig(
            api_key=API_KEY,
            reply=reply if log is None else _logged(reply, log),
            first_token_latency=LATENCIES["llm_first_token"],
            tokens_per_second=LATENCIES["llm_tokens_per_second"],
            tokens="subwords",
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
    del chat.chat_request_times[:-16], chat.replies[:-16]
    del eleven.messages[:-64], eleven.contexts[:-64], eleven.query[:-16]


@contextlib.asynccontextmanager
async def run_providers(
    script: Sequence[str] | SttScript,
    *,
    work_dir: Path,
    cpu: int | None = None,
    utterance_files: Sequence[str] = (),
    llm_log: Path | None = None,
    reply: str = "support",
) -> AsyncIterator[ProviderUrls]:
    """Start the fakes process (pinned to `cpu` if given); yields their URLs.

    `utterance_files` (the script said as μ-law) let the STT fake split a sentence's words
    across the finals its pauses produce (an `SttScript` says it all itself). `reply`:
    "support" (the benchmarks' default) or "echo"."""
    if reply not in REPLIES:
        raise ValueError(f"unknown reply style {reply!r}; choose one of {sorted(REPLIES)}")
    script_file = work_dir / "stt-script.json"
    if not isinstance(script, SttScript):
        audio = [await asyncio.to_thread(Path(f).read_bytes) for f in utterance_files]
        script = SttScript(list(script), [spoken_seconds(a) for a in audio] or None)
    spec = {
        "script": script.lines,
        "seconds": script.seconds,
        "wordTimes": script.word_times,
        "utteranceGap": script.utterance_gap,
        "llmLog": str(llm_log) if llm_log else None,
        "reply": reply,
    }
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
    with contextlib.ExitStack() as files:
        log = files.enter_context(open(spec["llmLog"], "a")) if spec.get("llmLog") else None
        try:
            import uvloop

            uvloop.run(_serve(spec, log))
        except ImportError:
            asyncio.run(_serve(spec, log))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

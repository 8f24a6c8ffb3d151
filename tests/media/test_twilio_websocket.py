"""The Twilio websocket transport's edges against starlette: a peer that is already gone when
the call closes its line (starlette raises `WebSocketDisconnect(1006)` from `close`) is not an
error — the session's close must go on to write the call's record."""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from media.twilio.websocket import TwilioWebSocket


class _GonePeer(WebSocket):
    """A starlette websocket whose peer vanished: sends and closes fail as starlette's do."""

    def __init__(self) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "websocket.disconnect", "code": 1006}

        async def send(message: dict[str, Any]) -> None:
            raise WebSocketDisconnect(code=1006)

        super().__init__({"type": "websocket", "path": "/twilio/media"}, receive, send)
        self.application_state = WebSocketState.CONNECTED
        self.client_state = WebSocketState.CONNECTED


async def test_closing_a_line_whose_peer_is_gone_is_quiet() -> None:
    transport = TwilioWebSocket(_GonePeer())
    await transport.close("customer-ended-call")  # must not raise
    await transport.close("customer-ended-call")  # idempotent

"""WebSocket error mapping shared by the adapters: websockets exceptions become `voice.errors`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from voice.errors import ProviderError, ProviderTimeout
from voice.providers._http import status_error

__all__ = ["close_code", "describe_close", "map_websocket_errors"]

log = logging.getLogger("ava.providers")

ABNORMAL_CLOSURE = 1006  # no close frame: the TCP connection just ended


def close_code(exc: ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else ABNORMAL_CLOSURE


def describe_close(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "connection lost without a close frame"
    reason = f" {exc.rcvd.reason}" if exc.rcvd.reason else ""
    return f"closed by the server with {exc.rcvd.code}{reason}"


def _rejection_detail(exc: InvalidStatus) -> str:
    response = exc.response
    # Deepgram puts its reason in `dg-error`; others only in the body.
    header = response.headers.get("dg-error") or response.headers.get("x-error")
    if header:
        return header
    body = response.body or b""
    return body[:300].decode("utf-8", "replace")


@contextmanager
def map_websocket_errors(
    provider: str, *, stage: str = "stream", timeout: float = 0.0
) -> Iterator[None]:
    """Convert websockets (and asyncio deadline) exceptions raised inside the block.

    A rejected upgrade is retryable by its HTTP status (401/403 are not; 429/5xx are); a dropped
    connection is retryable; a deadline becomes `ProviderTimeout(stage, timeout)`.
    """
    try:
        yield
    except InvalidStatus as exc:
        raise status_error(
            provider, stage, exc.response.status_code, _rejection_detail(exc)
        ) from exc
    except InvalidURI as exc:
        raise ProviderError(provider, f"{stage}: invalid-url", retryable=False) from exc
    except InvalidHandshake as exc:
        # its text may quote the server's headers: the log has it, the call record does not
        log.warning("%s %s: handshake failed: %s", provider, stage, exc)
        raise ProviderError(provider, f"{stage}: handshake failed", retryable=True) from exc
    except ConnectionClosed as exc:
        raise ProviderError(provider, f"{stage}: {describe_close(exc)}", retryable=True) from exc
    except TimeoutError as exc:  # before OSError: TimeoutError is one
        raise ProviderTimeout(provider, stage, timeout) from exc
    except OSError as exc:
        # "[Errno 111] Connect call failed ('10.0.0.5', 6379)" describes the operator's network
        log.warning("%s %s: %s", provider, stage, exc)
        raise ProviderError(provider, f"{stage}: connect-error", retryable=True) from exc

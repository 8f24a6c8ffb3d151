"""HTTP error mapping shared by the adapters: httpx exceptions become `voice.errors`.

The retry rule follows the usual 4xx/5xx split (livekit's `APIStatusError`, the OpenAI SDK's own
retry set): a 4xx means the request itself is wrong (bad key, bad model, bad input), so sending it
again cannot help, except 408 (timeout), 409 (conflict) and 429 (rate limit); 5xx is the
provider's problem and may pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from voice.errors import ProviderError, ProviderTimeout

__all__ = ["map_httpx_errors", "retryable_status", "status_error"]

_RETRYABLE_4XX = frozenset({408, 409, 429})
_DETAIL_CHARS = 300


def retryable_status(status: int) -> bool:
    return status in _RETRYABLE_4XX or status >= 500


def status_error(provider: str, stage: str, status: int, detail: str = "") -> ProviderError:
    detail = " ".join(detail.split())[:_DETAIL_CHARS]
    message = f"{stage}: HTTP {status}" + (f": {detail}" if detail else "")
    return ProviderError(provider, message, retryable=retryable_status(status))


@contextmanager
def map_httpx_errors(
    provider: str, *, stage: str = "request", timeout: float = 0.0
) -> Iterator[None]:
    """Convert httpx (and asyncio deadline) exceptions raised inside the block.

    `stage` and `timeout` describe the deadline a timeout broke, for `ProviderTimeout`.
    """
    try:
        yield
    except httpx.HTTPStatusError as exc:
        raise status_error(provider, stage, exc.response.status_code) from exc
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise ProviderTimeout(provider, stage, timeout) from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ProviderError(provider, f"{stage}: bad URL: {exc}", retryable=False) from exc
    except httpx.TransportError as exc:
        # connect refused, reset, peer closed mid-body: the network or the server, not us
        raise ProviderError(
            provider, f"{stage}: {type(exc).__name__}: {exc}", retryable=True
        ) from exc

"""HTTP error mapping shared by the adapters: httpx exceptions become `voice.errors`.

The retry rule follows the usual 4xx/5xx split (livekit's `APIStatusError`, the OpenAI SDK's own
retry set): a 4xx means the request itself is wrong (bad key, bad model, bad input), so sending it
again cannot help, except 408 (timeout), 409 (conflict) and 429 (rate limit); 5xx is the
provider's problem and may pass.

What a `ProviderError` says ends up in call records (`providerErrors`, `endedMessage`), which the
tenant reads; the provider may be the tenant's own URL (custom-llm). So it carries the HTTP
status or a fixed error kind (`voice.egress_http.error_kind`) only: never the remote body or an
exception's text, which would describe whatever answered there. Those go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from voice.egress import EgressDenied
from voice.egress_http import error_kind
from voice.errors import ProviderError, ProviderTimeout

__all__ = ["map_httpx_errors", "retryable_status", "status_error"]

log = logging.getLogger("ava.providers")

_RETRYABLE_4XX = frozenset({408, 409, 429})
_DETAIL_CHARS = 300  # of the remote body, in the log only


def retryable_status(status: int) -> bool:
    return status in _RETRYABLE_4XX or status >= 500


def status_error(provider: str, stage: str, status: int, detail: str = "") -> ProviderError:
    """The error for an HTTP `status` answer. `detail` (what the server said) is logged, not
    put in the error."""
    if detail:
        log.warning(
            "%s %s: HTTP %d: %s", provider, stage, status, " ".join(detail.split())[:_DETAIL_CHARS]
        )
    return ProviderError(provider, f"{stage}: HTTP {status}", retryable=retryable_status(status))


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
        raise ProviderError(provider, f"{stage}: invalid-url", retryable=False) from exc
    except EgressDenied as exc:
        # the operator's egress policy refused the address: asking again cannot help
        log.warning("%s %s: %s", provider, stage, exc)
        raise ProviderError(provider, f"{stage}: {EgressDenied.kind}", retryable=False) from exc
    except httpx.TransportError as exc:
        # connect refused, reset, peer closed mid-body: the network or the server, not us
        log.warning("%s %s: %s: %s", provider, stage, type(exc).__name__, exc)
        raise ProviderError(provider, f"{stage}: {error_kind(exc)}", retryable=True) from exc

"""Which Twilio account signed a request, and whether the signature holds.

Shared by the voice webhook, the status callback and the media websocket: each finds the
imported number the request is about, and checks `X-Twilio-Signature` with that number's own
account's auth token only, never the operator's. A request about a number no tenant imported is
checked with the operator's TWILIO_AUTH_TOKEN (not at all in dev mode). Every check happens
before anything else is answered, and a failed one is answered the same way (`REFUSED`) whether
or not the number exists: the endpoints tell an unsigned caller nothing about which numbers do.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request, Response
from starlette.datastructures import Headers

from control.settings import Settings
from control.state import AppState
from media.twilio.signature import public_url, validate_signature
from storage import PhoneNumberRecord

__all__ = [
    "MAX_WEBHOOK_BYTES",
    "external_url",
    "read_form",
    "refused",
    "signing_token",
    "unknown_numbers",
    "webhook_signed",
]

MAX_WEBHOOK_BYTES = 64 * 1024


def external_url(state: AppState, headers: Headers, scheme: str, path: str, ws: bool) -> str:
    """The URL Twilio used (and signed), seen through any TLS-terminating proxy."""
    configured = state.settings.public_url.rstrip("/")
    if configured:
        base_scheme, _, host = configured.partition("://")
        if ws:
            base_scheme = {"https": "wss", "http": "ws"}.get(base_scheme, base_scheme)
        return f"{base_scheme}://{host}{path}"
    return public_url(
        scheme,
        headers.get("host", "localhost"),
        path,
        forwarded_proto=headers.get("x-forwarded-proto"),
        forwarded_host=headers.get("x-forwarded-host"),
        websocket=ws,
    )


async def signing_token(state: AppState, number: PhoneNumberRecord | None) -> str | None:
    """The auth token Twilio signs requests about `number` with.

    A tenant's number: its own account's token, or None when it has none (a number imported
    with an API key only, before tokens were required): nothing can vouch for its requests, so
    none is accepted. No number: the operator's token ("" in dev mode: not checked)."""
    if number is None:
        return state.settings.twilio_auth_token.get_secret_value()
    credentials = await state.stores.phone_numbers.credentials(number.tenant_id, number.id)
    if credentials is None or not credentials.auth_token:
        return None
    return credentials.auth_token


def unknown_numbers(settings: Settings) -> str:
    """What a call to a number no tenant imported gets: "assistant-file" or "reject".

    The operator's explicit setting, or by mode: the assistant file in dev mode (the quick
    start), refused otherwise. Never a consequence of what tenants imported."""
    if settings.unknown_numbers:
        return settings.unknown_numbers
    return "assistant-file" if settings.dev_mode else "reject"


def refused() -> Response:
    """The one answer to a request whose signature does not hold, number or no number."""
    return Response("invalid signature", status_code=403, media_type="text/plain")


async def read_form(request: Request) -> dict[str, str] | None:
    """The webhook's form fields; None if the body is over MAX_WEBHOOK_BYTES."""
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        return None
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


async def webhook_signed(
    state: AppState, request: Request, form: dict[str, str], number: PhoneNumberRecord | None
) -> bool:
    token = await signing_token(state, number)
    if token is None:
        return False
    if not token:
        return True
    url = external_url(state, request.headers, request.url.scheme, request.url.path, False)
    if request.url.query:
        url = f"{url}?{request.url.query}"
    return validate_signature(token, url, form, request.headers.get("x-twilio-signature", ""))

"""Which Twilio account signed a request, and whether the signature holds.

Shared by the voice webhook, the status callback and the media websocket: each finds the
imported number the request is about, and checks `X-Twilio-Signature` with that number's token.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request
from starlette.datastructures import Headers

from control.state import AppState
from media.twilio.signature import public_url, validate_signature
from storage import PhoneNumberRecord

__all__ = ["MAX_WEBHOOK_BYTES", "auth_token", "external_url", "read_form", "webhook_signed"]

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


async def auth_token(state: AppState, number: PhoneNumberRecord | None) -> str:
    """The auth token Twilio signs this number's requests with ("" = don't check: dev mode).

    A number imported with an API key and secret has no auth token of its own; the server's
    TWILIO_AUTH_TOKEN (the operator's account) is the only one left to check with."""
    if number is not None:
        credentials = await state.stores.phone_numbers.credentials(number.tenant_id, number.id)
        if credentials is not None and credentials.auth_token:
            return credentials.auth_token
    return state.settings.twilio_auth_token.get_secret_value()


async def read_form(request: Request) -> dict[str, str] | None:
    """The webhook's form fields; None if the body is over MAX_WEBHOOK_BYTES."""
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        return None
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


async def webhook_signed(
    state: AppState, request: Request, form: dict[str, str], number: PhoneNumberRecord | None
) -> bool:
    token = await auth_token(state, number)
    if not token:
        return True
    url = external_url(state, request.headers, request.url.scheme, request.url.path, False)
    if request.url.query:
        url = f"{url}?{request.url.query}"
    return validate_signature(token, url, form, request.headers.get("x-twilio-signature", ""))

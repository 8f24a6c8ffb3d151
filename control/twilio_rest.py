"""Twilio's REST API (calls and phone numbers) through the `twilio` SDK, errors made ours.

The SDK runs on its own async HTTP client (`AsyncTwilioHttpClient`, aiohttp) rather than the
sync client in a thread: the thread pool is sized for inference (two threads on two cores), and
a REST request that stalls must not hold one of them. Every request gets a deadline here, since
the SDK sets none by default.

`base_url` (settings: `TWILIO_API_BASE_URL`) reroutes every Twilio domain, not only
`api.twilio.com`, by rewriting the scheme and host of each absolute URL the SDK builds, keeping
its path: the SDK's own edge/region rewriting hook is the one place every request passes.

Every failure becomes a `TwilioRestError` that says whether trying again may help (429, 5xx,
connection errors, timeouts) and carries Twilio's `code` and `message` when Twilio sent them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

__all__ = [
    "DEFAULT_STATUS_EVENTS",
    "TwilioRest",
    "TwilioRestError",
]

DEFAULT_STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


class TwilioRestError(Exception):
    """A Twilio REST request failed.

    `status` is the HTTP status (None when no response came), `code` Twilio's error code
    (https://www.twilio.com/docs/errors/<code>) when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        code: int | None = None,
        more_info: str = "",
    ) -> None:
        super().__init__(f"twilio: {message}")
        self.message = message
        self.retryable = retryable
        self.status = status
        self.code = code
        self.more_info = more_info


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # the SDK ships no types
    """The SDK's aiohttp client, sending Basic auth as a header.

    Its own `request` builds `aiohttp.BasicAuth`, deprecated since aiohttp 3.14 (a warning on
    every request), and leaves the response unreleased until the body is read.
    """

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the SDK's signature; TwilioRest sets deadlines
        allow_redirects: bool = False,
    ) -> Response:
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(auth[0], auth[1])
        session: aiohttp.ClientSession = self.session
        async with session.request(
            method.upper(),
            url,
            params=cast(dict[str, str], params),
            data=data,
            headers=headers,
            allow_redirects=allow_redirects,
        ) as response:
            text = await response.text()
        return Response(response.status, text, response.headers)


class _RoutedClient(Client):  # type: ignore[misc]  # the twilio SDK ships no type information
    """A Client whose every domain (api, …) is served from one base URL."""

    def __init__(self, base_url: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._base = urlsplit(base_url.rstrip("/")) if base_url else None

    def get_hostname(self, uri: str) -> str:
        if self._base is None:
            return str(super().get_hostname(uri))
        parts = urlsplit(uri)
        path = self._base.path + parts.path
        return urlunsplit((self._base.scheme, self._base.netloc, path, parts.query, ""))


class TwilioRest:
    """One Twilio account's REST API. Use as `async with`, or call `aclose()` when done."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str | None = None,
        api_key: tuple[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        username, password = api_key if api_key is not None else (account_sid, auth_token)
        self.account_sid = account_sid
        self.timeout = timeout
        self._http: _HttpClient | None = None
        self._client_args: dict[str, Any] = {
            "base_url": base_url or None,
            "username": username,
            "password": password,
            "account_sid": account_sid,
            # Without this the SDK reads TWILIO_EDGE/TWILIO_REGION from os.environ (an empty
            # mapping counts as absent): settings are read in one place only.
            "environment": {"AVA_TWILIO_SDK": "1"},
        }
        self._client: _RoutedClient | None = None

    def _api(self) -> Any:
        # aiohttp wants its session created inside the running loop, so the client is lazy.
        if self._client is None:
            self._http = _HttpClient(timeout=self.timeout)
            self._client = _RoutedClient(http_client=self._http, **self._client_args)
        return self._client.api.v2010.accounts(self.account_sid)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http, self._client = None, None

    async def __aenter__(self) -> TwilioRest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await request()
        except TwilioRestException as exc:
            raise _rest_error(what, exc) from exc
        except TimeoutError as exc:
            raise TwilioRestError(
                f"{what}: no answer within {self.timeout:.1f}s", retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise TwilioRestError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from exc
        except TwilioException as exc:
            page = _refused_page(what, exc)
            if page is None:
                raise TwilioRestError(
                    f"{what}: unreadable response: {exc}", retryable=False
                ) from exc
            raise page from exc
        except (ValueError, KeyError, TypeError) as exc:
            # A 2xx whose body is not the resource JSON: Twilio did something we do not know.
            raise TwilioRestError(f"{what}: unreadable response: {exc}", retryable=False) from exc

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        twiml: str | None = None,
        url: str | None = None,
        status_callback: str | None = None,
        status_callback_events: Sequence[str] = DEFAULT_STATUS_EVENTS,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Place a call (`POST /Accounts/{sid}/Calls.json`); returns its CallSid. `options`:
        more of `calls.create`'s arguments (answering-machine detection)."""
        if (twiml is None) == (url is None):
            raise ValueError("give exactly one of twiml and url")
        kwargs: dict[str, Any] = {**(options or {}), "to": to, "from_": from_}
        if twiml is not None:
            kwargs["twiml"] = twiml
        else:
            kwargs["url"] = url
            kwargs["method"] = "POST"
        if status_callback:
            kwargs["status_callback"] = status_callback
            kwargs["status_callback_method"] = "POST"
            kwargs["status_callback_event"] = list(status_callback_events)
        call = await self._call("create call", lambda: self._api().calls.create_async(**kwargs))
        sid = call.sid
        if not isinstance(sid, str) or not sid:
            raise TwilioRestError("create call: the response has no call sid", retryable=False)
        return sid

    async def update_call_twiml(self, call_sid: str, twiml: str) -> None:
        """Replace what a live call is doing with `twiml` (`POST /Calls/{sid}.json Twiml=…`)."""
        await self._call(
            "update call", lambda: self._api().calls(call_sid).update_async(twiml=twiml)
        )

    async def end_call(self, call_sid: str) -> bool:
        """Hang up (`Status=completed`). False when Twilio no longer knows the call (20404)."""
        try:
            await self._call(
                "end call", lambda: self._api().calls(call_sid).update_async(status="completed")
            )
        except TwilioRestError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def find_number(self, phone_number: str) -> str | None:
        """The PN sid of `phone_number` if this account has it (GET IncomingPhoneNumbers.json
        ?PhoneNumber=…); None if it does not. Proves the credentials control the number."""
        found = await self._call(
            "find number",
            lambda: self._api().incoming_phone_numbers.list_async(
                phone_number=phone_number, limit=2
            ),
        )
        matches = [n for n in found if getattr(n, "phone_number", None) == phone_number]
        return str(matches[0].sid) if matches else None

    async def configure_number(
        self, phone_number: str, voice_url: str, status_callback: str | None = None
    ) -> str:
        """Point an account's number at us; returns its PN sid.

        The number is looked up by E.164 in IncomingPhoneNumbers, then its VoiceUrl (and status
        callback) set, both POST.
        """
        sid = await self.find_number(phone_number)
        if sid is None:
            raise TwilioRestError(
                f"the account {self.account_sid} has no number {phone_number}",
                retryable=False,
                status=404,
            )
        fields: dict[str, Any] = {"voice_url": voice_url, "voice_method": "POST"}
        if status_callback:
            fields |= {"status_callback": status_callback, "status_callback_method": "POST"}
        await self._call(
            "configure number",
            lambda: self._api().incoming_phone_numbers(sid).update_async(**fields),
        )
        return sid


def _refused_page(what: str, exc: TwilioException) -> TwilioRestError | None:
    """A list page Twilio refused, which the SDK raises bare (`TwilioException("Unable to fetch
    page", response)`), as the error `_rest_error` makes of any other refusal."""
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    if not isinstance(status, int) or status == 200:
        return None
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    message, code = body.get("message"), body.get("code")
    code = code if isinstance(code, int) else None
    return _rest_error(what, TwilioRestException(status, "", msg=str(message or ""), code=code))


def _rest_error(what: str, exc: TwilioRestException) -> TwilioRestError:
    status = int(exc.status)
    code = exc.code if isinstance(exc.code, int) and exc.code != status else None
    # The SDK prefixes Twilio's message with its own ("Unable to create record: …").
    message = str(exc.msg or "")
    _, sep, twilio_message = message.partition(": ")
    more_info = f"https://www.twilio.com/docs/errors/{code}" if code else ""
    return TwilioRestError(
        f"{what}: HTTP {status}"
        + (f" (Twilio error {code})" if code else "")
        + f": {twilio_message if sep else message}",
        retryable=status == 429 or status >= 500,
        status=status,
        code=code,
        more_info=more_info,
    )

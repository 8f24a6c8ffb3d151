"""A protocol-faithful fake of Twilio's REST API for calls and phone numbers (protocols.md §1.7).

Speaks the 2010-04-01 API as the `twilio` SDK and curl see it: form-encoded request bodies
(repeated keys for lists such as `StatusCallbackEvent`), HTTP Basic auth (account SID and auth
token, or an API key SID and secret), snake_case JSON resources, list pages with
`next_page_uri`, and Twilio's error JSON `{code, message, more_info, status}`.

    POST /2010-04-01/Accounts/{AccountSid}/Calls.json                        create a call (201)
    GET  /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json              fetch
    POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json              update (Status, …)
    GET  /2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json         list (?PhoneNumber=)
         (only the account's own numbers: `config.numbers` seeds them, `add_number` adds one;
         a number the account lacks gives an empty list, as Twilio answers)
    POST /2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers/{Sid}.json   update (VoiceUrl, …)

Every request is recorded (`requests`), whether or not it was accepted. Faults (`fault`,
`fault_count`, optionally only for `fault_paths` containing a substring) reject with Twilio's
error for that status, stall, or answer 200 with a body that is not JSON; `latency` delays every
answer. A created call waits in `calls` (status `queued`) for the test to drive it;
`call_updated` is set on each update so a test can wait for a hang-up.

Status callbacks (protocols.md §1.6): `send_status(sid, status)` POSTs one to the call's
`StatusCallback` as Twilio does (form-encoded, `X-Twilio-Signature` with the account's auth
token, `SequenceNumber` counting from 0 per call) if the call asked for that event. With
`config.status_callbacks` the fake sends `initiated` after creating a call and `completed` /
`canceled` after a hang-up by itself. Each callback's answer is kept in `callbacks`.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benchmarks.fakes.server import REJECT_STATUS, Fault, FaultSwitch
from media.twilio.signature import compute_signature

__all__ = [
    "FakeCall",
    "FakeNumber",
    "FakeTwilioRest",
    "FakeTwilioRestConfig",
    "RecordedRequest",
    "SentCallback",
    "twilio_error",
]

API = "/2010-04-01/Accounts/{account}"
_ERROR_TEXT = {
    401: (20003, "Authenticate"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
}
_CALL_STATUSES = {"completed", "canceled"}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _now() -> str:
    return format_datetime(datetime.now(UTC))


def twilio_error(status: int, code: int, message: str) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    form: list[tuple[str, str]]
    username: str  # from Basic auth; "" when absent

    def field(self, name: str) -> str | None:
        return next((v for k, v in self.form if k == name), None)

    def fields(self, name: str) -> list[str]:
        return [v for k, v in self.form if k == name]


@dataclass
class FakeCall:
    sid: str
    account_sid: str
    to: str
    from_: str
    twiml: str | None
    url: str | None
    status_callback: str | None
    status_callback_events: list[str]
    status: str = "queued"
    updates: list[dict[str, str]] = field(default_factory=list)
    callbacks_sent: int = 0  # the next SequenceNumber

    def resource(self) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.sid}.json"
        now = _now()
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "phone_number_sid": None,
            "status": self.status,
            "start_time": None,
            "end_time": now if self.status in _CALL_STATUSES else None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "direction": "outbound-api",
            "answered_by": None,
            "api_version": "2010-04-01",
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "date_created": now,
            "date_updated": now,
            "uri": uri,
            "subresource_uris": {"recordings": uri.replace(".json", "/Recordings.json")},
        }


@dataclass
class FakeNumber:
    phone_number: str
    account_sid: str
    sid: str = field(default_factory=lambda: _sid("PN"))
    voice_url: str = ""
    voice_method: str = "POST"
    status_callback: str = ""
    status_callback_method: str = "POST"

    def resource(self) -> dict[str, Any]:
        now = _now()
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "friendly_name": self.phone_number,
            "phone_number": self.phone_number,
            "voice_url": self.voice_url,
            "voice_method": self.voice_method,
            "voice_fallback_url": None,
            "voice_fallback_method": "POST",
            "status_callback": self.status_callback,
            "status_callback_method": self.status_callback_method,
            "voice_caller_id_lookup": False,
            "voice_application_sid": None,
            "sms_url": "",
            "sms_method": "POST",
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "status": "in-use",
            "origin": "twilio",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers/{self.sid}.json",
        }


@dataclass
class FakeTwilioRestConfig:
    # account SID -> auth token
    accounts: dict[str, str] = field(default_factory=dict)
    # API key SID -> (account SID, secret)
    api_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    # account SID -> the E.164 numbers it owns (IncomingPhoneNumbers lists only these)
    numbers: dict[str, list[str]] = field(default_factory=dict)
    latency: float = 0.0  # before every answer
    fault: Fault | None = None  # UNAUTHORIZED, RATE_LIMITED, SERVER_ERROR, STALL, GARBAGE
    fault_count: int | None = None  # requests that get the fault; None: all
    fault_paths: tuple[str, ...] = ()  # only requests whose path contains one of these
    stall_limit: float = 60.0
    status_callbacks: bool = False  # send initiated / completed / canceled by itself


@dataclass(frozen=True)
class SentCallback:
    status: str
    sequence: int
    response_status: int  # what the receiver answered; 0 when it could not be reached


# A status callback goes out when its event was asked for (StatusCallbackEvent).
_EVENT_OF = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}


@dataclass
class FakeTwilioRest:
    config: FakeTwilioRestConfig = field(default_factory=FakeTwilioRestConfig)
    requests: list[RecordedRequest] = field(default_factory=list)
    calls: dict[str, FakeCall] = field(default_factory=dict)
    numbers: list[FakeNumber] = field(default_factory=list)
    callbacks: list[SentCallback] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults = FaultSwitch()
        for account, owned in self.config.numbers.items():
            for phone_number in owned:
                self.add_number(account, phone_number)
        self.call_created = asyncio.Event()
        self.call_updated = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route(API + "/Calls.json", self._create_call, methods=["POST"]),
                Route(API + "/Calls/{call}.json", self._call, methods=["GET", "POST"]),
                Route(API + "/IncomingPhoneNumbers.json", self._list_numbers, methods=["GET"]),
                Route(
                    API + "/IncomingPhoneNumbers/{number}.json",
                    self._update_number,
                    methods=["POST"],
                ),
            ]
        )

    def add_number(self, account_sid: str, phone_number: str) -> FakeNumber:
        number = FakeNumber(phone_number=phone_number, account_sid=account_sid)
        self.numbers.append(number)
        return number

    async def send_status(self, call_sid: str, status: str, **fields: str) -> SentCallback | None:
        """POST a signed status callback for `call_sid`; None if the call did not ask for it."""
        call = self.calls[call_sid]
        event = _EVENT_OF.get(status, "completed")  # every terminal status is "completed"
        if not call.status_callback or event not in call.status_callback_events:
            return None
        form = {
            "AccountSid": call.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call.sid,
            "CallStatus": status,
            "CallbackSource": "call-progress-events",
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "SequenceNumber": str(call.callbacks_sent),
            "Timestamp": _now(),
            "To": call.to,
            **fields,
        }
        call.callbacks_sent += 1
        token = self.config.accounts.get(call.account_sid, "")
        headers = {"X-Twilio-Signature": compute_signature(token, call.status_callback, form)}
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(call.status_callback, data=form, headers=headers)
            code = answer.status_code
        except httpx.HTTPError:
            code = 0
        sent = SentCallback(status, int(form["SequenceNumber"]), code)
        self.callbacks.append(sent)
        return sent

    def _callback(self, call: FakeCall, status: str) -> BackgroundTask | None:
        if not self.config.status_callbacks:
            return None
        return BackgroundTask(self.send_status, call.sid, status)

    # --- every request --------------------------------------------------------------------------

    async def _admit(self, request: Request) -> tuple[RecordedRequest, Response | None]:
        """Record the request, then: auth, latency, faults. A Response means answer with it."""
        body = (await request.body()).decode("utf-8", "replace")
        username, password = _basic_auth(request.headers.get("authorization", ""))
        recorded = RecordedRequest(
            request.method,
            request.url.path,
            dict(request.query_params),
            parse_qsl(body, keep_blank_values=True),
            username,
        )
        self.requests.append(recorded)
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        if self._account_of(username, password) != request.path_params["account"]:
            code, text = _ERROR_TEXT[401]
            return recorded, twilio_error(401, code, text)
        paths = self.config.fault_paths
        if paths and not any(p in request.url.path for p in paths):
            return recorded, None
        fault = self._faults.take(self.config.fault, self.config.fault_count)
        if fault in REJECT_STATUS:
            status = REJECT_STATUS[fault]
            code, text = _ERROR_TEXT[status]
            return recorded, twilio_error(status, code, text)
        if fault is Fault.STALL:
            await asyncio.sleep(self.config.stall_limit)
        if fault is Fault.GARBAGE:
            return recorded, Response("<html>bad gateway</html>", media_type="text/html")
        return recorded, None

    def _account_of(self, username: str, password: str) -> str | None:
        if username.startswith("SK") and username in self.config.api_keys:
            account, secret = self.config.api_keys[username]
            return account if secrets.compare_digest(secret.encode(), password.encode()) else None
        token = self.config.accounts.get(username)
        # bytes: Basic auth may carry any UTF-8, and compare_digest refuses non-ASCII str
        if token is not None and secrets.compare_digest(token.encode(), password.encode()):
            return username
        return None

    # --- Calls ----------------------------------------------------------------------------------

    async def _create_call(self, request: Request) -> Response:
        recorded, answer = await self._admit(request)
        if answer is not None:
            return answer
        to, from_ = recorded.field("To"), recorded.field("From")
        twiml, url = recorded.field("Twiml"), recorded.field("Url")
        if not to:
            return twilio_error(400, 21201, "No 'To' number is specified")
        if not from_:
            return twilio_error(400, 21213, "No 'From' number is specified")
        if not twiml and not url:
            return twilio_error(400, 21205, "Url parameter is required.")
        call = FakeCall(
            sid=_sid("CA"),
            account_sid=request.path_params["account"],
            to=to,
            from_=from_,
            twiml=twiml,
            url=url,
            status_callback=recorded.field("StatusCallback"),
            status_callback_events=recorded.fields("StatusCallbackEvent"),
        )
        self.calls[call.sid] = call
        self.call_created.set()
        return JSONResponse(
            call.resource(), status_code=201, background=self._callback(call, "initiated")
        )

    async def _call(self, request: Request) -> Response:
        recorded, answer = await self._admit(request)
        if answer is not None:
            return answer
        call = self.calls.get(request.path_params["call"])
        if call is None or call.account_sid != request.path_params["account"]:
            return twilio_error(
                404, 20404, f"The requested resource {request.url.path} was not found"
            )
        if request.method == "POST":
            update = dict(recorded.form)
            status = update.get("Status")
            if status is not None and status not in _CALL_STATUSES:
                return twilio_error(400, 21220, "Invalid call state for this action")
            if status is not None:
                call.status = status
            call.updates.append(update)
            self.call_updated.set()
            if status is not None:
                return JSONResponse(call.resource(), background=self._callback(call, status))
        return JSONResponse(call.resource())

    # --- IncomingPhoneNumbers -------------------------------------------------------------------

    async def _list_numbers(self, request: Request) -> Response:
        recorded, answer = await self._admit(request)
        if answer is not None:
            return answer
        account = request.path_params["account"]
        wanted = recorded.query.get("PhoneNumber")
        found = [
            n.resource()
            for n in self.numbers
            if n.account_sid == account and (wanted is None or n.phone_number == wanted)
        ]
        size = int(recorded.query.get("PageSize", "50"))
        uri = f"{request.url.path}?PageSize={size}&Page=0"
        return JSONResponse(
            {
                "incoming_phone_numbers": found[:size],
                "end": max(min(len(found), size) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": size,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }
        )

    async def _update_number(self, request: Request) -> Response:
        recorded, answer = await self._admit(request)
        if answer is not None:
            return answer
        sid, account = request.path_params["number"], request.path_params["account"]
        number = next((n for n in self.numbers if n.sid == sid and n.account_sid == account), None)
        if number is None:
            return twilio_error(
                404, 20404, f"The requested resource {request.url.path} was not found"
            )
        update = dict(recorded.form)
        number.voice_url = update.get("VoiceUrl", number.voice_url)
        number.voice_method = update.get("VoiceMethod", number.voice_method)
        number.status_callback = update.get("StatusCallback", number.status_callback)
        number.status_callback_method = update.get(
            "StatusCallbackMethod", number.status_callback_method
        )
        return JSONResponse(number.resource())


def _basic_auth(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    return user, password

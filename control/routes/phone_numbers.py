"""`/phone-number`: Twilio numbers imported by a tenant. Credentials go in, never come out.

An import (and a PATCH that changes the credentials) must prove the tenant controls the number:
outside dev mode Twilio's REST API, asked with the credentials given, must list it among the
account's IncomingPhoneNumbers, with the auth token (which checks every inbound request's
signature) and with the API key if one is given. The auth token is required even with an API
key: without it nothing could tell the number's calls from forged ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from control.deps import StateDep, StoresDep, TenantDep
from control.errors import ApiError, not_found
from control.outbound import twilio_for
from control.state import AppState
from control.twilio_auth import external_url
from control.twilio_rest import TwilioRestError
from control.twilio_status import STATUS_PATH
from storage import UNSET, Conflict, NotFound, TwilioCredentials
from storage.resources import Unset
from voice.assistant import check_server
from voice.notification_plan import NotificationPlan

__all__ = ["router"]

router = APIRouter(prefix="/phone-number", tags=["phone numbers"])

JsonObject = dict[str, Any]
Limit = Annotated[int, Query(ge=1, le=1000)]
VOICE_PATH = "/twilio/voice"
NEEDS_AUTH_TOKEN = (
    "twilioAuthToken: required with twilioApiKey/twilioApiSecret too: Twilio signs the number's "
    "calls with the account's auth token, so without it the number cannot take inbound calls"
)
NOT_IN_ACCOUNT = "number: number not found in that Twilio account"


class _Body(BaseModel):
    # extra="ignore": Vapi's DTO has fields AVA does not act on yet (hooks, smsEnabled, …);
    # clients that send them must not be refused.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str | None = Field(default=None, max_length=40)
    assistant_id: str | None = None
    server: dict[str, Any] | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("twilioApiKey", "apiKey")
    )
    twilio_api_secret: str | None = Field(
        default=None, validation_alias=AliasChoices("twilioApiSecret", "apiSecret")
    )
    # AVA extension: e-mail summaries of the number's calls, merged over its assistant's plan.
    notification_plan: NotificationPlan | None = None

    def plan_json(self) -> dict[str, Any] | None:
        """The plan as given (only the fields set: a number overrides what it names)."""
        plan = self.notification_plan
        return None if plan is None else plan.model_dump(by_alias=True, exclude_unset=True)

    @field_validator("server")
    @classmethod
    def _usable_server(cls, server: dict[str, Any] | None) -> dict[str, Any] | None:
        check_server(server)  # http(s) URL, timeoutSeconds 1–300 or null: 422 at save time
        return server

    def credentials(self) -> TwilioCredentials:
        try:
            credentials = TwilioCredentials(
                account_sid=self.twilio_account_sid or "",
                auth_token=self.twilio_auth_token,
                api_key=self.twilio_api_key,
                api_secret=self.twilio_api_secret,
            )
        except ValueError as exc:
            field = "twilioAuthToken" if self.twilio_account_sid else "twilioAccountSid"
            raise ApiError(422, [f"{field}: {exc}"]) from exc
        if bool(credentials.api_key) != bool(credentials.api_secret):
            raise ApiError(422, ["twilioApiSecret: twilioApiKey and twilioApiSecret go together"])
        if not credentials.auth_token:
            raise ApiError(422, [NEEDS_AUTH_TOKEN])
        return credentials


class PhoneNumberCreate(_Body):
    provider: Literal["twilio"] = "twilio"
    # Vapi's current DTO says `number`; older ones `twilioPhoneNumber`.
    number: str = Field(validation_alias=AliasChoices("number", "twilioPhoneNumber"))
    # AVA extension. Vapi always repoints the number's voice webhook on import; AVA does it when
    # asked, since it needs AVA_PUBLIC_URL (or the request's host) to be what Twilio can reach.
    configure_twilio_webhook: bool = False


async def _configure_webhook(state: AppState, request: Request, body: PhoneNumberCreate) -> None:
    """Point the number's voice URL and status callback at this server, through its account.

    Also proves the credentials: Twilio refuses a wrong token and a number the account lacks."""
    twilio = twilio_for(state.settings, body.credentials())
    assert twilio is not None  # credentials() has raised unless they are complete
    headers, scheme = request.headers, request.url.scheme
    try:
        async with twilio:
            await twilio.configure_number(
                body.number,
                external_url(state, headers, scheme, VOICE_PATH, False),
                external_url(state, headers, scheme, STATUS_PATH, False),
            )
    except TwilioRestError as exc:
        status = 502 if exc.retryable else 400
        raise ApiError(status, f"Twilio did not configure {body.number}: {exc}") from exc


async def _prove_ownership(state: AppState, number: str, credentials: TwilioCredentials) -> None:
    """422 unless the account behind `credentials` has `number` (see the module docstring).

    Skipped in dev mode (no TWILIO_AUTH_TOKEN: a local server with no operator account to
    protect, and numbers that may not exist anywhere)."""
    if state.settings.dev_mode:
        return
    assert credentials.auth_token  # credentials() refuses an import without one
    logins = [TwilioCredentials(credentials.account_sid, auth_token=credentials.auth_token)]
    if credentials.api_key:
        logins.append(replace(credentials, auth_token=None))
    for login in logins:
        field = "twilioApiKey" if login.api_key else "twilioAuthToken"
        twilio = twilio_for(state.settings, login)
        assert twilio is not None
        try:
            async with twilio:
                sid = await twilio.find_number(number)
        except TwilioRestError as exc:
            if exc.retryable:
                raise ApiError(502, "Twilio did not answer; try again") from exc
            if exc.status in (401, 403):
                raise ApiError(422, [f"{field}: Twilio refused these credentials"]) from exc
            raise ApiError(422, [f"number: Twilio could not look it up ({exc.status})"]) from exc
        if sid is None:
            raise ApiError(422, [NOT_IN_ACCOUNT])


class PhoneNumberUpdate(_Body):
    pass


@router.post("", status_code=201)
async def import_phone_number(
    body: PhoneNumberCreate, request: Request, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    stores = state.stores
    credentials = body.credentials()
    await _prove_ownership(state, body.number, credentials)
    if body.configure_twilio_webhook:
        if await stores.phone_numbers.route(body.number) is not None:
            raise ApiError(409, f"{body.number} is already imported")  # before touching Twilio
        await _configure_webhook(state, request, body)
    try:
        record = await stores.phone_numbers.create(
            tenant_id,
            number=body.number,
            credentials=credentials,
            name=body.name,
            assistant_id=body.assistant_id,
            server=body.server,
            notification_plan=body.plan_json(),
        )
    except ValueError as exc:
        raise ApiError(422, [f"number: {exc}"]) from exc
    except NotFound as exc:
        raise ApiError(422, [f"assistantId: {exc}"]) from exc
    except Conflict as exc:
        raise ApiError(409, str(exc)) from exc
    return record.to_vapi()


@router.get("")
async def list_phone_numbers(
    stores: StoresDep, tenant_id: TenantDep, limit: Limit = 100
) -> list[JsonObject]:
    return [r.to_vapi() for r in await stores.phone_numbers.list(tenant_id, limit=limit)]


@router.get("/{phone_number_id}")
async def get_phone_number(
    phone_number_id: str, stores: StoresDep, tenant_id: TenantDep
) -> JsonObject:
    record = await stores.phone_numbers.get(tenant_id, phone_number_id)
    if record is None:
        raise not_found("phone number")
    return record.to_vapi()


@router.patch("/{phone_number_id}")
async def update_phone_number(
    phone_number_id: str, body: PhoneNumberUpdate, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    stores = state.stores
    current = await stores.phone_numbers.get(tenant_id, phone_number_id)
    if current is None:
        raise not_found("phone number")
    given = body.model_fields_set
    secrets = {"twilio_auth_token", "twilio_api_key", "twilio_api_secret"}
    credentials: TwilioCredentials | Unset = UNSET
    if given & (secrets | {"twilio_account_sid"}):
        if not given & secrets:
            raise ApiError(422, ["twilioAuthToken: changing the account SID needs its secrets"])
        if body.twilio_account_sid is None:
            body.twilio_account_sid = current.twilio_account_sid
        credentials = body.credentials()
        await _prove_ownership(state, current.number, credentials)
    try:
        record = await stores.phone_numbers.update(
            tenant_id,
            phone_number_id,
            name=body.name if "name" in given else UNSET,
            assistant_id=body.assistant_id if "assistant_id" in given else UNSET,
            server=body.server if "server" in given else UNSET,
            credentials=credentials,
            notification_plan=body.plan_json() if "notification_plan" in given else UNSET,
        )
    except NotFound as exc:
        raise ApiError(422, [f"assistantId: {exc}"]) from exc
    if record is None:
        raise not_found("phone number")
    return record.to_vapi()


@router.delete("/{phone_number_id}")
async def delete_phone_number(
    phone_number_id: str, stores: StoresDep, tenant_id: TenantDep
) -> JsonObject:
    record = await stores.phone_numbers.get(tenant_id, phone_number_id)
    if record is None or not await stores.phone_numbers.delete(tenant_id, phone_number_id):
        raise not_found("phone number")
    return record.to_vapi()

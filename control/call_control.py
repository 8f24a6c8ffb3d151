"""The call loop's `CallControl` port on Twilio: a transfer redirects the live call to `<Dial>`.

`POST /Calls/{CallSid}.json Twiml=<Response><Dial>+1…</Dial></Response>` makes Twilio leave the
`<Connect><Stream>` (it sends `stop` and closes the media websocket) and dial the destination,
bridging the caller to it. The credentials are those of the account the call came in on: the
imported number's (tenant calls), else the server's TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN. With
neither there is no call control (dev mode): `transferCall` then tells the model it cannot
transfer, and the call goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from control.settings import Settings
from control.stores import Stores
from control.twilio_rest import TwilioRest, TwilioRestError
from media.twilio.twiml import dial
from voice.ports import CallControlError, TransferDestination

__all__ = ["TwilioCallControl", "twilio_call_control"]

log = logging.getLogger("ava.twilio")


class TwilioCallControl:
    """Controls one live Twilio call. Owns its REST client (closed with `aclose`)."""

    def __init__(self, rest: TwilioRest, call_sid: str) -> None:
        if not call_sid:
            raise ValueError("a call sid is needed to control a call")
        self.rest = rest
        self.call_sid = call_sid

    async def transfer(self, destination: TransferDestination) -> None:
        twiml = dial(
            destination.number, caller_id=destination.caller_id, extension=destination.extension
        )
        try:
            await self.rest.update_call_twiml(self.call_sid, twiml)
        except TwilioRestError as exc:
            raise CallControlError(str(exc), retryable=exc.retryable) from exc
        log.info("call %s transferred to %s", self.call_sid, destination.number)

    async def aclose(self) -> None:
        await self.rest.aclose()


async def twilio_call_control(
    settings: Settings, stores: Stores, metadata: Mapping[str, str]
) -> TwilioCallControl | None:
    """Call control for the call `metadata` describes (ids from the media stream), or None
    when there are no credentials for its account."""
    call_sid = metadata.get("call_sid", "")
    if not call_sid:
        return None
    base_url = settings.twilio_api_base_url
    tenant_id, number_id = metadata.get("tenant_id"), metadata.get("phone_number_id")
    if tenant_id and number_id:
        credentials = await stores.phone_numbers.credentials(tenant_id, number_id)
        if credentials is None:
            return None
        if credentials.auth_token:
            rest = TwilioRest(credentials.account_sid, credentials.auth_token, base_url=base_url)
        else:
            assert credentials.api_key is not None and credentials.api_secret is not None
            rest = TwilioRest(
                credentials.account_sid,
                "",
                base_url=base_url,
                api_key=(credentials.api_key, credentials.api_secret),
            )
        return TwilioCallControl(rest, call_sid)
    account_sid = settings.twilio_account_sid
    token = settings.twilio_auth_token.get_secret_value()
    if not account_sid or not token:
        return None
    return TwilioCallControl(TwilioRest(account_sid, token, base_url=base_url), call_sid)

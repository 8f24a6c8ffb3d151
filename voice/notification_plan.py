"""AVA's `notificationPlan` (an extension; Vapi has none): what is sent to people once a call
has ended. Today one kind, `email`: a summary of the call to `to`, with the parts in `include`.

Set on an assistant and on a phone number; a number's plan is merged over its assistant's
(`merged_email`: the fields the number sets win). Addresses are checked when the plan is saved
(a 422 naming the field), and strictly: the plan comes from a tenant and its addresses become
SMTP envelope recipients and a `To:` header, so nothing with a line break, a display name or a
comment gets through.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "EMAIL_PARTS",
    "MAX_RECIPIENTS",
    "EmailNotification",
    "EmailPart",
    "NotificationPlan",
    "check_address",
    "merged_email",
]

EmailPart = Literal["summary", "transcript", "recordingUrl", "structuredData"]
EMAIL_PARTS: tuple[EmailPart, ...] = get_args(EmailPart)
MAX_RECIPIENTS = 10  # a call summary, not a mailing list
_MAX_ADDRESS_CHARS = 254  # RFC 5321's path limit, less the angle brackets

# A plain addr-spec: dot-atom local part, a domain of DNS labels with a dot in it. Narrower than
# RFC 5322 on purpose (no quoted local parts, no IP literals): every address a person would give.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")


def check_address(value: str) -> str:
    """`value` if it is one plain e-mail address; ValueError otherwise."""
    if len(value) > _MAX_ADDRESS_CHARS or _ADDRESS.fullmatch(value) is None:
        raise ValueError(f"not an e-mail address: {value[:80]!r}")
    local, _, _ = value.partition("@")
    if len(local) > 64:
        raise ValueError("the part before @ is over 64 characters")
    return value


class _Plan(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True
    )


class EmailNotification(_Plan):
    enabled: bool = True
    to: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    include: list[EmailPart] = Field(default_factory=lambda: list(EMAIL_PARTS))

    @field_validator("to", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # one address may be given bare

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            check_address(address)
        return list(dict.fromkeys(value))  # each recipient once

    @field_validator("include")
    @classmethod
    def _once(cls, value: list[EmailPart]) -> list[EmailPart]:
        return list(dict.fromkeys(value))

    @property
    def active(self) -> bool:
        """Enabled, with someone to send to."""
        return self.enabled and bool(self.to)


class NotificationPlan(_Plan):
    email: EmailNotification | None = None


def merged_email(
    assistant: NotificationPlan | None, number: NotificationPlan | None
) -> EmailNotification | None:
    """The call's e-mail plan: the number's over the assistant's, field by field (only the
    fields the number's plan sets); None when neither has one."""
    base = assistant.email if assistant is not None else None
    over = number.email if number is not None else None
    if over is None:
        return base
    if base is None:
        return over
    fields = base.model_dump(exclude_unset=True) | over.model_dump(exclude_unset=True)
    return EmailNotification.model_validate(fields)

"""The operator's egress policy (`voice.egress`) as the settings define it, built once.

`AVA_EGRESS_ALLOW` lists what tenant URLs may reach besides public addresses; dev mode (no
Twilio token) also allows loopback, so the quick start's local servers keep working.
"""

from __future__ import annotations

import functools

from control.settings import Settings
from voice.egress import EgressPolicy

__all__ = ["egress_policy"]


@functools.cache
def _policy(allow: str, dev_mode: bool) -> EgressPolicy:
    return EgressPolicy.from_setting(allow, dev_mode=dev_mode)


def egress_policy(settings: Settings) -> EgressPolicy:
    """The policy for `settings` (one per distinct setting, shared by every caller). Raises
    ValueError for an `AVA_EGRESS_ALLOW` entry that is neither a host name nor a CIDR."""
    return _policy(settings.egress_allow, settings.dev_mode)

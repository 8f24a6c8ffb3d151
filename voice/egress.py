"""Where a tenant-supplied URL may lead: the operator's egress policy, sans I/O.

Tenants choose URLs (`server.url`, tool servers, assistant-request, custom-llm); the process
that follows them sits inside the operator's network. So every address a tenant URL resolves to
is checked before it is connected to (`voice.egress_http` does the resolving and connecting),
and these are refused unless the operator allows them:

    loopback      127.0.0.0/8, ::1
    private       RFC 1918, fc00::/7 (unique local), fec0::/10, 64:ff9b:1::/48 (local NAT64)
    link-local    169.254.0.0/16, fe80::/10
    cgnat         100.64.0.0/10 (shared address space: often the provider's own network)
    multicast     224.0.0.0/4, ff00::/8
    unspecified   0.0.0.0/8, :: (0.0.0.0 reaches the local host on Linux)
    metadata      169.254.169.254, fd00:ec2::254 (AWS), 100.100.100.200 (Alibaba)
    reserved      documentation, benchmarking, 240.0.0.0/4, IETF protocol space, and every IPv6
                  address outside 2000::/3 (global unicast)

An IPv6 address that embeds an IPv4 one (IPv4-mapped ::ffff:a.b.c.d, 6to4 2002::/16, NAT64
64:ff9b::/96) gets the verdict of the IPv4 address it leads to.

The operator's allow list (`AVA_EGRESS_ALLOW`, comma-separated) names host names (exact, or
".example.com" for any name under it) and CIDRs (or single addresses); a host or address on it
is allowed whatever its kind. Dev mode (no Twilio token) also allows loopback, so the quick
start's local servers keep working.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "DENIED_NETWORKS",
    "EgressDenied",
    "EgressPolicy",
    "IPAddress",
    "IPNetwork",
    "check_url_scheme",
    "denied_reason",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in rows)


# Checked in order, first match wins: the metadata addresses before the ranges holding them.
DENIED_NETWORKS: Final = _networks(
    ("169.254.169.254/32", "metadata"),
    ("100.100.100.200/32", "metadata"),
    ("fd00:ec2::254/128", "metadata"),
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),
    ("2001::/23", "reserved"),  # IETF protocol assignments (Teredo, ORCHID, …)
    ("2001:db8::/32", "reserved"),
    ("3fff::/20", "reserved"),  # documentation (RFC 9637)
    ("fc00::/7", "private"),
    ("fec0::/10", "private"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST_V6: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class EgressDenied(Exception):
    """A tenant URL led to an address the operator's policy refuses. `kind` is what a call
    record or API response may say about it; the message (address and reason) is for logs."""

    kind: Final = "egress-denied"

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        super().__init__(f"egress to {host} ({address}) is not allowed: {reason} address")
        self.host = host
        self.address = address
        self.reason = reason


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (mapped, 6to4, well-known NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _unscoped(address: IPAddress) -> IPAddress:
    # "fe80::1%eth0": the zone does not change what the address is
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def denied_reason(address: IPAddress) -> str | None:
    """Why `address` is refused without an allow-list entry ("loopback", "private", …), or
    None for a public address."""
    address = _unscoped(address)
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            return denied_reason(embedded)
    for network, reason in DENIED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None


def _host_key(host: str) -> str:
    return host.strip().rstrip(".").lower()


class EgressPolicy:
    """The operator's egress policy: `allow` is `AVA_EGRESS_ALLOW` (host names, ".suffix"
    domains, addresses and CIDRs, comma-separated); `allow_loopback` is dev mode.

    Raises ValueError for an allow-list entry that is neither a host name nor a CIDR."""

    def __init__(self, allow: str = "", *, allow_loopback: bool = False) -> None:
        hosts: set[str] = set()
        suffixes: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allow.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _host_key(entry)
            if not name or any(c in name for c in " /:@[]") or name in (".", "*"):
                raise ValueError(f"AVA_EGRESS_ALLOW: {entry!r} is neither a host name nor a CIDR")
            if name.startswith("*."):
                name = name[1:]
            (suffixes if name.startswith(".") else hosts).add(name)
        self.hosts: frozenset[str] = frozenset(hosts)
        self.suffixes: tuple[str, ...] = tuple(sorted(suffixes))
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self.allow_loopback = allow_loopback

    @classmethod
    def from_setting(cls, allow: str, *, dev_mode: bool) -> EgressPolicy:
        """The policy of a server with `AVA_EGRESS_ALLOW` = `allow`; dev mode allows loopback."""
        return cls(allow, allow_loopback=dev_mode)

    def __repr__(self) -> str:
        entries = [*sorted(self.hosts), *self.suffixes, *map(str, self.networks)]
        return f"EgressPolicy({','.join(entries)!r}, allow_loopback={self.allow_loopback})"

    def host_allowed(self, host: str) -> bool:
        """Whether `host` is on the allow list by name (any address it resolves to is then
        allowed: the operator vouched for the name)."""
        name = _host_key(host)
        return name in self.hosts or any(name.endswith(s) for s in self.suffixes)

    def _address_allowed(self, address: IPAddress) -> bool:
        candidates: Iterable[IPAddress] = (address,)
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_v4(address)
            if embedded is not None:
                candidates = (address, embedded)
        return any(a.version == n.version and a in n for a in candidates for n in self.networks)

    def reason(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to `address` (resolved from `host`) is refused, or None if allowed."""
        address = _unscoped(address)
        reason = denied_reason(address)
        if reason is None:
            return None
        if reason == "loopback" and self.allow_loopback:
            return None
        if self.host_allowed(host) or self._address_allowed(address):
            return None
        return reason

    def check(self, host: str, address: IPAddress) -> None:
        """Raises EgressDenied unless `address` (resolved from `host`) may be connected to."""
        reason = self.reason(host, address)
        if reason is not None:
            raise EgressDenied(host, address, reason)


def check_url_scheme(url: str, field: str = "url") -> None:
    """Validation-time check of a tenant URL: http or https, with a host. Raises ValueError
    naming `field`. (The address it leads to is checked when it is connected to.)"""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"{field} is not a valid URL") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{field} must be an http:// or https:// URL")
    if not host:
        raise ValueError(f"{field} must name a host")

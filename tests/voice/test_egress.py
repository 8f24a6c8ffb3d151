"""The egress policy's address check: fixed cases and hypothesis properties."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice.egress import (
    DENIED_NETWORKS,
    EgressDenied,
    EgressPolicy,
    IPAddress,
    IPNetwork,
    check_url_scheme,
    denied_reason,
)

STRICT = EgressPolicy()
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def v4s() -> st.SearchStrategy[ipaddress.IPv4Address]:
    return st.integers(0, 2**32 - 1).map(V4)


def in_network(network: IPNetwork) -> st.SearchStrategy[IPAddress]:
    first, last = int(network.network_address), int(network.broadcast_address)
    kind = V4 if network.version == 4 else V6
    return st.integers(first, last).map(kind)


def public_v4() -> st.SearchStrategy[ipaddress.IPv4Address]:
    # unicast space outside every special-purpose range (IANA's registry), by construction
    ranges = [("1.0.0.0", "9.255.255.255"), ("11.0.0.0", "100.63.255.255"),
              ("100.128.0.0", "126.255.255.255"), ("128.0.0.0", "169.253.255.255"),
              ("169.255.0.0", "172.15.255.255"), ("172.32.0.0", "191.255.255.255"),
              ("193.0.0.0", "198.17.255.255"), ("198.20.0.0", "198.51.99.255"),
              ("198.51.101.0", "203.0.112.255"), ("203.0.114.0", "223.255.255.255")]  # fmt: skip
    return st.one_of(*(st.integers(int(V4(a)), int(V4(b))).map(V4) for a, b in ranges)).filter(
        lambda a: a not in ipaddress.IPv4Network("192.88.99.0/24")
    )


def public_v6() -> st.SearchStrategy[ipaddress.IPv6Address]:
    # global unicast 2000::/3, minus the IETF, documentation and 6to4 blocks
    lo, hi = int(V6("2400::")), int(V6("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
    return st.integers(lo, hi).map(V6)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.7", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("3fff::1", "reserved"),
        ("100::1", "reserved"),
        # embedded IPv4: mapped, 6to4, NAT64 get the verdict of the address they lead to
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:a9fe:a9fe::", "metadata"),  # 6to4 of 169.254.169.254
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "metadata"),
    ],
)
def test_internal_addresses_are_denied(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    assert denied_reason(ip) == reason
    with pytest.raises(EgressDenied) as denied:
        STRICT.check("tenant.example", ip)
    assert denied.value.kind == "egress-denied" and denied.value.reason == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    STRICT.check("tenant.example", ipaddress.ip_address(address))


def test_the_allow_list_names_hosts_domains_and_networks() -> None:
    policy = EgressPolicy(" 10.0.0.0/8 , hooks.internal., .corp.example, fd00::/8, 192.168.1.5 ")
    ten, metadata = V4("10.9.8.7"), V4("169.254.169.254")
    policy.check("anything", ten)
    policy.check("anything", V6("::ffff:10.9.8.7"))  # the mapped form of an allowed address
    policy.check("HOOKS.internal", metadata)  # the operator vouched for the name
    policy.check("a.b.corp.example", metadata)
    policy.check("x", V4("192.168.1.5"))
    with pytest.raises(EgressDenied):
        policy.check("x", V4("192.168.1.6"))
    with pytest.raises(EgressDenied):
        policy.check("corp.example.evil", metadata)  # a suffix match is on a dot boundary
    with pytest.raises(EgressDenied):
        policy.check("hooks.internal.evil", metadata)


def test_dev_mode_allows_loopback_only() -> None:
    dev = EgressPolicy.from_setting("", dev_mode=True)
    dev.check("localhost", V4("127.0.0.1"))
    dev.check("localhost", V6("::1"))
    dev.check("x", V6("::ffff:127.0.0.1"))
    for internal in ("169.254.169.254", "10.0.0.1", "0.0.0.0"):
        with pytest.raises(EgressDenied):
            dev.check("x", ipaddress.ip_address(internal))
    with pytest.raises(EgressDenied):
        EgressPolicy.from_setting("", dev_mode=False).check("localhost", V4("127.0.0.1"))


@pytest.mark.parametrize("entry", ["a b", "http://x/", "*", "user@host"])
def test_a_bad_allow_list_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="neither a host name nor a CIDR"):
        EgressPolicy(f"10.0.0.0/8,{entry}")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://x/", "gopher://x", "javascript:alert(1)", "http://", "x"]
)
def test_only_http_urls_with_a_host_pass_validation(url: str) -> None:
    with pytest.raises(ValueError, match="server.url"):
        check_url_scheme(url, "server.url")


def test_http_and_https_urls_pass_validation() -> None:
    check_url_scheme("https://hooks.example.com/vapi")
    check_url_scheme("HTTP://10.0.0.1:8080/x")  # the address is checked at connect time


# --- properties -------------------------------------------------------------------------------


@given(st.sampled_from(DENIED_NETWORKS).flatmap(lambda row: in_network(row[0])))
def test_every_address_in_a_denied_network_is_denied(address: IPAddress) -> None:
    assert denied_reason(address) is not None
    with pytest.raises(EgressDenied):
        STRICT.check("tenant.example", address)


@given(st.one_of(public_v4(), public_v6()))
def test_every_public_address_is_allowed(address: IPAddress) -> None:
    assert denied_reason(address) is None
    STRICT.check("tenant.example", address)
    EgressPolicy.from_setting("", dev_mode=True).check("tenant.example", address)


@given(v4s())
def test_embedded_forms_agree_with_the_ipv4_verdict(address: ipaddress.IPv4Address) -> None:
    verdict = denied_reason(address)
    mapped = V6(f"::ffff:{address}")
    sixtofour = V6((0x2002 << 112) | (int(address) << 80) | 1)
    nat64 = V6(int(V6("64:ff9b::")) | int(address))
    for form in (mapped, sixtofour, nat64):
        assert denied_reason(form) == verdict
        assert STRICT.reason("h", form) == STRICT.reason("h", address)


@given(v4s(), st.integers(8, 32), v4s())
def test_allow_list_cidr_membership_is_respected(
    base: ipaddress.IPv4Address, prefix: int, address: ipaddress.IPv4Address
) -> None:
    network = ipaddress.IPv4Network(f"{base}/{prefix}", strict=False)
    policy = EgressPolicy(str(network))
    if address in network or denied_reason(address) is None:
        policy.check("h", address)
    else:
        with pytest.raises(EgressDenied):
            policy.check("h", address)


@given(v4s())
def test_strict_policy_verdicts_never_depend_on_the_host_name(
    address: ipaddress.IPv4Address,
) -> None:
    assert STRICT.reason("a.example", address) == STRICT.reason("localhost", address)

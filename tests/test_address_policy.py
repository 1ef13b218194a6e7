"""The default address policy (`is_public_address`) against the IANA special-purpose registries.

Nothing here sends traffic anywhere: the policy tests are pure, and the one downloader test runs
with ``connect`` spied on, so a broken guard fails the test instead of opening a connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from photo_eraser.fetch import Fetcher, FetchError, is_public_address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry (RFC 6890; registry as of 2024-2025):
# (prefix, name, "Globally Reachable" as IANA gives it: True, False, or None for N/A).
IPV4_SPECIAL = [
    ("0.0.0.0/8", '"This network"', False),
    ("0.0.0.0/32", '"This host on this network"', False),
    ("10.0.0.0/8", "Private-Use", False),
    ("100.64.0.0/10", "Shared Address Space", False),
    ("127.0.0.0/8", "Loopback", False),
    ("169.254.0.0/16", "Link Local", False),
    ("172.16.0.0/12", "Private-Use", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", False),
    ("192.0.0.8/32", "IPv4 dummy address", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", False),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", False),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", False),
    ("192.31.196.0/24", "AS112-v4", True),
    ("192.52.193.0/24", "AMT", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", None),
    ("192.88.99.2/32", "6a44-relay anycast address", False),
    ("192.168.0.0/16", "Private-Use", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", True),
    ("198.18.0.0/15", "Benchmarking", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", False),
    ("240.0.0.0/4", "Reserved", False),
    ("255.255.255.255/32", "Limited Broadcast", False),
]

# IANA IPv6 Special-Purpose Address Registry (RFC 6890; registry as of 2024-2025), same columns.
IPV6_SPECIAL = [
    ("::1/128", "Loopback Address", False),
    ("::/128", "Unspecified Address", False),
    ("::ffff:0:0/96", "IPv4-mapped Address", False),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", True),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat. (local-use)", False),
    ("100::/64", "Discard-Only Address Block", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", False),
    ("2001::/23", "IETF Protocol Assignments", False),
    ("2001::/32", "TEREDO", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", True),
    ("2001:2::/48", "Benchmarking", False),
    ("2001:3::/32", "AMT", True),
    ("2001:4:112::/48", "AS112-v6", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", None),
    ("2001:20::/28", "ORCHIDv2", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", True),
    ("2001:db8::/32", "Documentation", False),
    ("2002::/16", "6to4", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", True),
    ("3fff::/20", "Documentation", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", False),
    ("fc00::/7", "Unique-Local", False),
    ("fe80::/10", "Link-Local Unicast", False),
]

# Entries whose addresses carry an IPv4 address that is what a connection really reaches: the
# policy judges the embedded IPv4 address, so these get the verdict of that address (checked
# below) rather than a blanket one. ::ffff:0:0/96 and 2002::/16 are not globally reachable
# in IANA's sense (the IPv6 address is not routed as such), but ::ffff:8.8.8.8 is 8.8.8.8 on a
# dual-stack socket and 2002:808:808::/48 is 8.8.8.8's 6to4 network, so they are allowed exactly
# when the embedded IPv4 address is. Their first and last addresses embed 0.0.0.0 and
# 255.255.255.255 and are refused like every other non-reachable entry.
FOLLOWS_EMBEDDED_IPV4 = {"::ffff:0:0/96", "64:ff9b::/96", "2002::/16"}

# Globally reachable entries the policy deliberately allows: separate allocations of ordinary
# routed unicast space. The other globally reachable entries (192.0.0.9/32, 192.0.0.10/32 and
# everything inside 2001::/23: anycast service addresses, AMT, AS112-v6, ORCHIDv2, DETs) lie in
# the IETF protocol assignment blocks, which the policy refuses as a whole; nothing is asserted
# about them, as no image host lives there.
ALLOWED_GLOBAL = {"192.31.196.0/24", "192.52.193.0/24", "192.175.48.0/24", "2620:4f:8000::/48"}


def _samples(prefix: str) -> list[IPAddress]:
    """The first, a middle and the last address of ``prefix``."""
    net = ipaddress.ip_network(prefix)
    return [net[0], net[net.num_addresses // 2], net[-1]]


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address:
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # 64:ff9b::/96


def _entries(*, reachable: bool) -> list[Any]:
    return [
        pytest.param(prefix, id=f"{prefix} {name}")
        for prefix, name, flag in IPV4_SPECIAL + IPV6_SPECIAL
        if (flag is True) == reachable
        and (not reachable or prefix in ALLOWED_GLOBAL | FOLLOWS_EMBEDDED_IPV4)
    ]


NOT_REACHABLE = _entries(reachable=False)  # False or N/A
REACHABLE = _entries(reachable=True)  # only those the policy allows (wholly or by embedded IPv4)


@pytest.mark.parametrize("prefix", NOT_REACHABLE)
def test_not_globally_reachable_entries_are_refused(prefix: str) -> None:
    first, middle, last = _samples(prefix)
    assert not is_public_address(first), first
    assert not is_public_address(last), last
    if prefix in FOLLOWS_EMBEDDED_IPV4:
        assert is_public_address(middle) == is_public_address(_embedded_ipv4(middle)), middle
    else:
        assert not is_public_address(middle), middle


@pytest.mark.parametrize("prefix", REACHABLE)
def test_globally_reachable_entries(prefix: str) -> None:
    if prefix in ALLOWED_GLOBAL:
        for ip in _samples(prefix):
            assert is_public_address(ip), ip
    else:
        for ip in _samples(prefix):
            assert is_public_address(ip) == is_public_address(_embedded_ipv4(ip)), ip


def test_policy_sets_name_real_registry_entries() -> None:
    flags = {prefix: flag for prefix, _name, flag in IPV4_SPECIAL + IPV6_SPECIAL}
    assert {p for p, flag in flags.items() if flag is True} >= ALLOWED_GLOBAL
    assert flags.keys() >= FOLLOWS_EMBEDDED_IPV4


# --- outside the registries ------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [
        "224.0.0.0/4",  # IPv4 multicast (its own registry)
        "fec0::/10",  # deprecated site-local (RFC 3879)
        "ff00::/8",  # IPv6 multicast
        # IANA IPv6 Address Space registry: everything but 2000::/3 is reserved or special
        "0000::/8",
        "0100::/8",
        "0200::/7",
        "0400::/6",
        "0800::/5",
        "1000::/4",
        "4000::/3",
        "6000::/3",
        "8000::/3",
        "a000::/3",
        "c000::/3",
        "e000::/4",
        "f000::/5",
        "f800::/6",
        "fe00::/9",
    ],
)
def test_other_non_global_space_is_refused(prefix: str) -> None:
    for ip in _samples(prefix):
        assert not is_public_address(ip), ip


@pytest.mark.parametrize(
    "address",
    [
        "fec0::1",
        "feff::1",
        "fed0::1234",
        "4000::1",
        "8000::1",
        "e000::1",
        "fe00::1",
        "ff02::1",
        "ff05::1:3",
        "ff0e::1",
        "224.0.0.251",
        "239.255.255.250",
        "::8.8.8.8",  # IPv4-compatible: deprecated (RFC 4291 section 2.5.5.1), refused outright
        "::10.0.0.1",
    ],
)
def test_sample_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "9.9.9.9",
    "93.184.216.34",
    "151.101.1.140",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "2620:fe::fe",
    "2a03:2880:f10c:83:face:b00c:0:25de",
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_stay_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# --- IPv4 embedded in IPv6 -------------------------------------------------------------------

# A Teredo address (2001:0::/32, RFC 4380): server 65.54.227.120, client 10.0.0.1 (stored
# inverted in the last 32 bits, f5ff:fffe).
TEREDO_PRIVATE_CLIENT = "2001:0:4136:e378:8000:63bf:f5ff:fffe"


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:100.64.0.1",
        "::ffff:192.0.2.1",
        "64:ff9b::10.0.0.1",
        "64:ff9b::169.254.169.254",
        "64:ff9b::127.0.0.1",
        "64:ff9b:1::10.0.0.1",  # local-use NAT64 (RFC 8215), /96 layout
        "64:ff9b:1:a00:0:100::",  # the same, /48 layout (RFC 6052 section 2.2)
        "64:ff9b:1::8.8.8.8",  # local-use NAT64 is refused whatever it embeds
        "2002:0a00:0001::1",  # 6to4 of 10.0.0.1
        "2002:c0a8:0101::1",  # 6to4 of 192.168.1.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        TEREDO_PRIVATE_CLIENT,
    ],
)
def test_ipv6_embedding_a_private_ipv4_is_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "ipv4", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "10.0.0.1", "127.0.0.1", "192.0.0.9"]
)
@pytest.mark.parametrize("form", ["mapped", "6to4", "nat64"])
def test_embedding_forms_follow_the_embedded_ipv4(ipv4: str, form: str) -> None:
    v4 = ipaddress.IPv4Address(ipv4)
    v6 = {
        "mapped": ipaddress.IPv6Address(0xFFFF << 32 | int(v4)),
        "6to4": ipaddress.IPv6Address(0x2002 << 112 | int(v4) << 80 | 1),
        "nat64": ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4)),
    }[form]
    assert is_public_address(v6) == is_public_address(v4), v6


def test_embedded_public_ipv4_is_allowed() -> None:
    for address in ["::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::1.1.1.1"]:
        assert is_public_address(ipaddress.ip_address(address)), address


def test_blocked_networks_see_the_ipv4_inside_local_use_nat64() -> None:
    async def allowed(address: str) -> bool:
        async with Fetcher(
            blocked_networks=["10.0.0.0/8"],
            max_bytes=1024,
            connect_timeout=1.0,
            read_timeout=1.0,
            total_timeout=1.0,
        ) as fetcher:
            return fetcher.is_allowed(ipaddress.ip_address(address))

    assert not asyncio.run(allowed("64:ff9b:1::10.0.0.1"))
    assert not asyncio.run(allowed("64:ff9b:1:a00:0:100::"))
    assert asyncio.run(allowed("64:ff9b:1::8.8.8.8"))


# --- through the downloader ------------------------------------------------------------------


def _is_loopback(host: object) -> bool:
    try:
        return ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_outside_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail (without connecting) on any connection attempt to a non-loopback address."""
    attempts: list[object] = []

    def guard(address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            attempts.append(address)
            raise AssertionError(f"connection attempted to {address!r}")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create = asyncio.base_events.BaseEventLoop.create_connection

    def connect(self: socket.socket, address: Any) -> None:
        guard(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        guard(address)
        return real_connect_ex(self, address)

    async def create_connection(
        self: Any, factory: Any, host: Any = None, *a: Any, **k: Any
    ) -> Any:
        if host is not None:
            guard(host)
        return await real_create(self, factory, host, *a, **k)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", create_connection)
    yield attempts


@pytest.mark.parametrize("address", ["fec0::1", "feff::1"])
def test_downloader_refuses_site_local_before_connecting(
    no_outside_connections: list[object], address: str
) -> None:
    async def run() -> bytes:
        async with Fetcher(
            max_bytes=1024, connect_timeout=5.0, read_timeout=5.0, total_timeout=10.0
        ) as fetcher:
            return await fetcher.fetch(f"http://[{address}]/a.png")

    # The stdlib selector loop, whose connections go through the spied methods (not uvloop).
    with (
        asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner,
        pytest.raises(FetchError) as refused,
    ):
        runner.run(run())
    assert str(refused.value) == (
        f"download failed: address {address} is not allowed (private/loopback)"
    )
    assert no_outside_connections == []

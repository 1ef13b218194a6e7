"""The downloader: fetches one image over http(s) within size, time and address limits.

SSRF guard. Each hop (the first request and every redirect) is handled the same way: the URL is
parsed once, its host is resolved once with ``getaddrinfo``, *every* resolved address is checked
against the address policy, and the connection goes to a checked address: the URL's host is
rewritten to the IP, the original name travels in the ``Host`` header and, for https, as the TLS
SNI name that the certificate is verified against. There is no second DNS lookup an attacker
could answer differently (DNS rebinding).

By default (``allow_private=False``) only globally routable unicast addresses are allowed:
loopback, private, link-local, multicast, reserved, unspecified and shared (CGNAT) addresses are
refused, for IPv4 and IPv6 alike, including IPv4 addresses embedded in IPv6 ones (IPv4-mapped,
IPv4-compatible, 6to4, Teredo, NAT64).

URLs carrying credentials (``http://user:pass@host/``) are refused: they are a classic way to
make a URL look like it points somewhere else, and credentials would leak into logs and tasks.

One ``Fetcher`` belongs to one event loop (its HTTP client and semaphores are bound to it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Self

import httpx

from photo_eraser.sizes import format_size

if TYPE_CHECKING:
    from photo_eraser.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["FetchError", "Fetcher", "is_public_address", "parse_url"]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_USER_AGENT = "photo-eraser/0.1 (+image download)"


class FetchError(Exception):
    """A download failed. ``str(error)`` is for users and starts with ``download failed:``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"download failed: {reason}")
        self.reason = reason


def parse_url(url: str) -> httpx.URL:
    """Parse a download URL; raise `FetchError` unless it is an absolute http(s) URL."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise FetchError("invalid URL") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise FetchError("only http and https URLs are accepted")
    if not parsed.raw_host:
        raise FetchError("URL has no host")
    if parsed.userinfo:
        raise FetchError("URLs with credentials (user:password@) are not accepted")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise FetchError(f"port {parsed.port} is not a valid TCP port (1 to 65535)")
    return parsed.copy_with(fragment=None)


# The default policy refuses what is not globally reachable (RFC 6890 and the IANA IPv4/IPv6
# Special-Purpose Address Registries). ``ipaddress``'s ``is_global`` is checked too, but it is
# incomplete and differs between Python versions (3.11's IPv6 ``is_global`` is only ``not
# is_private``, which lets site-local fec0::/10 and reserved space through): these lists decide.
_IPV4_REFUSED = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private-use
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata)
        "172.16.0.0/12",  # private-use
        # IETF protocol assignments, refused whole: also 192.0.0.9/32 (PCP anycast) and
        # 192.0.0.10/32 (TURN anycast), which IANA marks globally reachable; no image host
        # lives on a protocol anycast address.
        "192.0.0.0/24",
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private-use
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # limited broadcast
    )
)
# IPv6: only global unicast can be reachable at all. Everything outside it is refused:
# ::/8 (loopback, unspecified, IPv4-compatible, discard 100::/64, ...), reserved space such as
# 4000::/3 and 5f00::/16 (SRv6 SIDs), fc00::/7 unique-local, fe80::/10 link-local, fec0::/10
# site-local (deprecated, RFC 3879), ff00::/8 multicast. Only the IPv4-mapped and NAT64
# 64:ff9b::/96 forms, judged by their IPv4 address, are exempt.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# Special-purpose blocks inside 2000::/3 that are not globally reachable.
_IPV6_REFUSED = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        # IETF protocol assignments (Teredo, benchmarking, ORCHID, ...), refused whole: also
        # the sub-blocks IANA marks globally reachable (PCP/TURN/DNS-SD anycast, AMT, AS112-v6,
        # ORCHIDv2, DETs), which are service addresses or identifiers, never image hosts.
        "2001::/23",
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)


def _embedded_addresses(ip: IPAddress) -> list[IPAddress]:
    """The address itself plus any IPv4 address an IPv6 address carries inside it.

    Where a connection to the IPv6 address may end up at the IPv4 one (IPv4-mapped,
    IPv4-compatible, 6to4, Teredo, NAT64), the IPv4 address must pass the policy as well.
    """
    found: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
        if ip in _NAT64 or int(ip) >> 32 == 0:
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _LOCAL_NAT64:
            # The operator picks the prefix length (48, 56, 64 or 96 bits inside the /48) and
            # it is not visible in the address: every RFC 6052 (section 2.2) layout counts.
            n = int(ip)
            found.extend(
                ipaddress.IPv4Address(v4)
                for v4 in (
                    ((n >> 64) & 0xFFFF) << 16 | (n >> 40) & 0xFFFF,  # /48
                    ((n >> 64) & 0xFF) << 24 | (n >> 32) & 0xFFFFFF,  # /56
                    (n >> 24) & 0xFFFFFFFF,  # /64
                    n & 0xFFFFFFFF,  # /96
                )
            )
    return found


def is_public_address(ip: IPAddress) -> bool:
    """The default policy: True only for globally reachable unicast addresses.

    Refused: whatever ``ipaddress`` does not call global, plus the ranges listed above that it
    misses (RFC 6890 and the IANA special-purpose registries; IPv6 outside 2000::/3). An IPv6
    address carrying an IPv4 address that a connection reaches (IPv4-mapped, 6to4, NAT64
    64:ff9b::/96) is judged by that IPv4 address: the IPv6 form is only another way to reach it.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_global and not any(ip in net for net in _IPV4_REFUSED)
    if ip.ipv4_mapped is not None or ip.sixtofour is not None or ip in _NAT64:
        return all(is_public_address(addr) for addr in _embedded_addresses(ip)[1:])
    if ip not in _IPV6_GLOBAL_UNICAST or any(ip in net for net in _IPV6_REFUSED):
        return False
    return ip.is_global and all(is_public_address(a) for a in _embedded_addresses(ip)[1:])


class _HostSlots:
    """At most ``per_host`` concurrent requests per host name; idle hosts are forgotten."""

    def __init__(self, per_host: int) -> None:
        self._per_host = per_host
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.setdefault(host, (asyncio.Semaphore(self._per_host), [0]))
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[host]


class Fetcher:
    """Downloads images: streaming, size-capped, time-limited, redirect- and SSRF-checked.

    ``blocked_networks`` replaces the default address policy (`is_public_address`) with an
    explicit list of refused networks; it exists for tests and special deployments. With
    ``allow_private=True`` no address is refused. ``verify`` is httpx's: an SSL context
    (e.g. trusting a private CA) or a bool; certificates are checked against the URL's host name.

    Timeouts: ``connect_timeout`` covers DNS and the TCP/TLS handshake, ``read_timeout`` the
    wait for each chunk, ``total_timeout`` the whole download including redirects. Time spent
    waiting for a free per-host slot does not count against ``total_timeout``.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_bytes: int,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        max_redirects: int = 3,
        per_host: int = 4,
        blocked_networks: Iterable[IPNetwork | str] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self._allow_private = allow_private
        self._blocked = (
            None
            if blocked_networks is None
            else tuple(ipaddress.ip_network(n, strict=False) for n in blocked_networks)
        )
        self._max_bytes = max_bytes
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._max_redirects = max_redirects
        self._slots = _HostSlots(per_host)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None
            ),
            # Requests go to IP addresses; a kept-alive TLS connection could be reused for
            # another host name on the same address, so every download uses a fresh connection.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,
            verify=verify,
            headers={
                "User-Agent": _USER_AGENT,
                "Accept": "image/*;q=1, */*;q=0.5",
                "Accept-Encoding": "identity",
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Fetcher:
        """A fetcher configured from the service settings."""
        return cls(
            allow_private=settings.allow_private_urls,
            max_bytes=settings.max_image_bytes,
            connect_timeout=settings.download_connect_timeout,
            read_timeout=settings.download_read_timeout,
            total_timeout=settings.download_total_timeout,
            max_redirects=settings.download_max_redirects,
            per_host=settings.download_per_host,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.aclose()

    def is_allowed(self, ip: IPAddress) -> bool:
        """Whether the address policy lets a download connect to ``ip``."""
        if self._allow_private:
            return True
        if self._blocked is None:
            return is_public_address(ip)
        return not any(addr in net for addr in _embedded_addresses(ip) for net in self._blocked)

    async def resolve(self, url: httpx.URL) -> list[IPAddress]:
        """The addresses of ``url``'s host (a URL from `parse_url`), all allowed by the address
        policy, else `FetchError`: resolved once, for a caller that connects to them itself
        (the callbacks' sender)."""
        host = url.raw_host.decode("ascii").lower()
        return await self._resolve(host, url.port or _DEFAULT_PORTS[url.scheme])

    async def fetch(self, url: str) -> bytes:
        """Download ``url`` and return its body; raise `FetchError` with a user-facing reason."""
        current = parse_url(url)
        budget = self._total_timeout
        loop = asyncio.get_running_loop()
        for _hop in range(self._max_redirects + 1):
            host = current.raw_host.decode("ascii").lower()
            async with self._slots.hold(host):
                started = loop.time()
                try:
                    async with asyncio.timeout(budget):
                        result = await self._fetch_hop(current, host)
                except TimeoutError:
                    raise FetchError("timed out") from None
                budget -= loop.time() - started
            if isinstance(result, bytes):
                return result
            current = result
        raise FetchError("too many redirects")

    async def _fetch_hop(self, url: httpx.URL, host: str) -> bytes | httpx.URL:
        """One request: the body, or the (validated) URL a redirect points to."""
        port = url.port or _DEFAULT_PORTS[url.scheme]
        addresses = await self._resolve(host, port)
        response = await self._connect(url, host, addresses)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise FetchError(f"HTTP {response.status_code} without a Location header")
                try:
                    target = url.join(location)
                except httpx.InvalidURL:
                    raise FetchError("redirect to an invalid URL") from None
                return parse_url(str(target))
            if not 200 <= response.status_code < 300:
                raise FetchError(f"HTTP {response.status_code}")
            return await self._read_body(response)
        except httpx.TimeoutException:
            raise FetchError("timed out") from None
        except httpx.RemoteProtocolError:
            raise FetchError(
                "the server closed the connection before the body was complete"
            ) from None
        except httpx.DecodingError:
            raise FetchError("the response body could not be decoded") from None
        except httpx.HTTPError:
            raise FetchError("the connection was lost during the download") from None
        finally:
            await response.aclose()

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` once and refuse it if any of its addresses is not allowed."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    infos = await loop.getaddrinfo(
                        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                    )
            except TimeoutError:
                raise FetchError("timed out") from None
            except (OSError, UnicodeError):
                raise FetchError(f"could not resolve host {host}") from None
            addresses = []
            for _family, _type, _proto, _name, sockaddr in infos:
                # Drop an IPv6 zone ("fe80::1%eth0"); link-local is refused anyway.
                ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise FetchError(f"could not resolve host {host}")
        for ip in addresses:
            if not self.is_allowed(ip):
                raise FetchError(f"address {ip} is not allowed (private/loopback)")
        return addresses

    async def _connect(
        self, url: httpx.URL, host: str, addresses: list[IPAddress]
    ) -> httpx.Response:
        """Send the request to the checked addresses in turn until one accepts it."""
        headers = {"Host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        failure = f"could not connect to {host}"
        for ip in addresses:
            request = self._client.build_request(
                "GET", url.copy_with(host=str(ip)), headers=headers, extensions=extensions
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError("timed out") from None
            except httpx.ConnectError as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise FetchError(f"TLS certificate of {host} is not valid") from None
                continue
            except httpx.HTTPError:
                failure = f"no valid HTTP response from {host}"
                continue
        raise FetchError(failure)

    async def _read_body(self, response: httpx.Response) -> bytes:
        """Read at most ``max_bytes``; stop (without buffering more) once the limit is passed."""
        too_large = FetchError(f"image exceeds {format_size(self._max_bytes)}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_bytes():
            if len(body) + len(chunk) > self._max_bytes:
                raise too_large
            body += chunk
        return bytes(body)

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
    return parsed.copy_with(fragment=None)


def _embedded_addresses(ip: IPAddress) -> list[IPAddress]:
    """The address itself plus any IPv4 address an IPv6 address carries inside it."""
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
    return found


def is_public_address(ip: IPAddress) -> bool:
    """The default policy: True only for globally routable unicast addresses."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_public_address(ip.ipv4_mapped)
    for addr in _embedded_addresses(ip):
        if (
            addr.is_loopback
            or addr.is_private
            or addr.is_link_local
            or addr.is_multicast
            or addr.is_reserved
            or addr.is_unspecified
            or not addr.is_global
        ):
            return False
    return True


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

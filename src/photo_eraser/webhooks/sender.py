"""The callbacks' HTTP sender: one POST per attempt, under the downloads' address policy.

As the downloader does (`fetch`), the URL's host is resolved once, every address is checked
against the policy (private, loopback, link-local ... refused unless
``PHOTO_ERASER_ALLOW_PRIVATE_URLS``), and the connection goes to a checked address, the name in
the ``Host`` header and the TLS SNI. Redirects are not followed: a 3xx is a failed attempt
(a receiver that moved gives its new URL in a new task), so a redirect can never lead a
callback to an address the policy refuses. One sender belongs to one event loop."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

from photo_eraser.fetch import Fetcher, FetchError, parse_url

_USER_AGENT = "photo-eraser/0.1 (+callback)"


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the HTTP status (None if there was no answer) and, unless it
    was a 2xx, why it counts as failed."""

    status_code: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


class WebhookSender:
    """POSTs callback bodies, ``timeout`` seconds at most per attempt (DNS, connect, send and
    the answer's headers)."""

    def __init__(
        self, *, allow_private: bool, timeout: float, verify: ssl.SSLContext | bool = True
    ) -> None:
        self.timeout = timeout
        # Only its address policy and resolver are used (`Fetcher.resolve`).
        self._policy = Fetcher(
            allow_private=allow_private,
            max_bytes=1,
            connect_timeout=timeout,
            read_timeout=timeout,
            total_timeout=timeout,
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            # Requests go to IP addresses: no connection is reused for another host name.
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,
            verify=verify,
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def check(self, url: str) -> None:
        """Raise `FetchError` unless ``url`` is an http(s) URL whose host resolves to addresses
        the policy allows (a create's ``callback_url``)."""
        await self._policy.resolve(parse_url(url))

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """Send one attempt; a 2xx answer is a delivery, anything else a failure."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(url, body, headers)
        except TimeoutError:
            return Answer(None, "timed out")
        except FetchError as exc:
            return Answer(None, exc.reason)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        parsed = parse_url(url)
        addresses = await self._policy.resolve(parsed)
        host = parsed.raw_host.decode("ascii").lower()
        sent = {
            **headers,
            "Host": parsed.netloc.decode("ascii"),
            "Content-Type": "application/json",
        }
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        failure = f"could not connect to {host}"
        for ip in addresses:
            request = self._client.build_request(
                "POST",
                parsed.copy_with(host=str(ip)),
                content=body,
                headers=sent,
                extensions=extensions,
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException:
                return Answer(None, "timed out")
            except httpx.ConnectError as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    return Answer(None, f"TLS certificate of {host} is not valid")
                continue
            except httpx.HTTPError:
                failure = f"no valid HTTP response from {host}"
                continue
            await response.aclose()  # the answer's body is not needed
            return _judge(response.status_code)
        return Answer(None, failure)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._policy.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _judge(status: int) -> Answer:
    if 200 <= status < 300:
        return Answer(status)
    if 300 <= status < 400:
        return Answer(status, f"HTTP {status}: redirects are not followed")
    return Answer(status, f"HTTP {status}")

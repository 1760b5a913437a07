"""GET of an ingest URL without SSRF: every hop checked against the allow-list and its addresses.

The host is resolved here, every address it resolves to is checked (``allow.check_address``), and the
connection goes to the checked address (the URL carries the IP, ``Host`` and TLS SNI the name), so a
second DNS answer cannot swap the address (DNS rebinding). Redirects are not followed by the client:
each ``Location`` is checked the same way, at most ``MAX_REDIRECTS`` times.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin

import httpx

from tessera.errors import OriginUnavailable
from tessera.ingest.allow import AllowList, IPAddress, SourceRefused, check_address, split_source

MAX_REDIRECTS = 5
_PORTS = {"http": 80, "https": 443}


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OriginUnavailable(f"cannot resolve the source host {host!r}: {exc.strerror}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def open_url(url: str, allow: AllowList, client: httpx.AsyncClient) -> httpx.Response:
    """A streamed ``200`` response for ``url`` (the caller closes it); raises ``SourceRefused`` (403),
    ``InvalidSource`` (400) or ``OriginUnavailable`` (502: unreachable, another status)."""
    for _ in range(MAX_REDIRECTS + 1):
        entry = allow.url_entry(url)
        parts = split_source(url)
        host = parts.hostname or ""
        port = parts.port or _PORTS[parts.scheme]
        addresses = await _resolve(host, port)
        for address in addresses:
            check_address(entry, address)
        address = addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=f"{literal}:{port}", fragment="").geturl()
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        request = client.build_request("GET", pinned, headers={"Host": parts.netloc}, extensions=extensions)
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise OriginUnavailable(f"source {parts.netloc} failed: {type(exc).__name__}") from None
        if response.is_redirect and "location" in response.headers:
            await response.aclose()
            url = urljoin(url, response.headers["location"])
            continue
        if response.status_code != 200:
            await response.aclose()
            raise OriginUnavailable(f"source answered HTTP {response.status_code}")
        return response
    raise SourceRefused(f"more than {MAX_REDIRECTS} redirects")

"""The public base URL of the server, as IIIF ids, ``Location`` and ``Link`` headers name it.

With ``server.public_url`` configured, that is the base of every URL the server writes. Otherwise the
base follows the request, as a plain server behind a proxy needs: the scheme uvicorn settled on
(``X-Forwarded-Proto`` from a trusted proxy, ``FORWARDED_ALLOW_IPS``) and the ``Host`` header, which
comes from the client and so is checked: a hostname or an IP literal with an optional port. Any other
``Host`` (``<``, quotes, spaces, a path, userinfo) is not reflected: the address the request came in on
is used instead. So no URL the server writes carries a character a client chose outside those rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")
_IPV6 = re.compile(r"\[([0-9A-Fa-f:.]{2,45})\]")
_PORT = re.compile(r"[0-9]{1,5}")


def valid_host(host: str) -> bool:
    """Whether ``host`` (a ``Host`` header value) is a hostname, IPv4 or ``[IPv6]``, with an optional port."""
    if len(host) > 260:
        return False
    name, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
        match = _IPV6.fullmatch(name)
        if match is None or not _is_ipv6(match.group(1)):
            return False
    else:
        name, colon, port = host.partition(":")
        if not _HOSTNAME.fullmatch(name) or (colon and not port):
            return False
    return not port or (_PORT.fullmatch(port) is not None and 0 < int(port) <= 65535)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def normalise_public_url(url: str) -> str:
    """``server.public_url`` checked (an http(s) URL with a host, no query, fragment or credentials)
    and without its trailing slash. Raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"public_url {url!r} must be an http:// or https:// URL, e.g. https://images.example.org"
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"public_url {url!r} must not have a query, a fragment or credentials")
    if not valid_host(parts.netloc):
        raise ValueError(f"public_url {url!r}: {parts.netloc!r} is not a hostname or IP address with a port")
    if re.search(r"[^A-Za-z0-9._~!$&'()*+,;=:@/%-]", parts.path):
        raise ValueError(f"public_url {url!r}: the path must be URL-encoded")
    return url.rstrip("/")


def request_base(scope: Mapping[str, Any], public_url: str | None) -> str:
    """The base URL for answers to the request of ``scope`` (an ASGI HTTP scope), without a trailing slash."""
    if public_url is not None:
        return public_url
    scheme = scope.get("scheme")
    if scheme not in ("http", "https"):
        scheme = "http"
    host = _host_header(scope)
    if host is None or not valid_host(host):
        host = _local_address(scope)
    return f"{scheme}://{host}{scope.get('root_path', '')}"


def _host_header(scope: Mapping[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return value.decode("latin-1")
    return None


def _local_address(scope: Mapping[str, Any]) -> str:
    """host:port of the socket the request came in on (``server.host`` and ``server.port``)."""
    host, port = scope.get("server") or ("localhost", None)
    if port is None:  # a Unix socket: its path is no host
        return "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""``storage.ingest_allow``: which sources ingest and bulk import may copy from.

Entries are local roots (``file:///srv/incoming/``), URL prefixes (``https://data.example.org/pub/``)
and S3 prefixes (``s3://bucket/`` or ``s3://bucket/prefix/``). A source is allowed when it lies under
an entry: a file's real path (links resolved) inside the entry's real path; a URL with the same scheme,
host and port and a path under the entry's path (at a ``/`` boundary); an S3 URL with the same bucket and
a key prefix under the entry's.

Addresses: an http(s) source is connected to only if every address its host resolves to is public, or
if the entry that allowed it names that address itself (an IP literal such as ``http://10.0.0.5:9000/``,
or ``localhost`` for loopback). A host name's entry never reaches a private, loopback, link-local or
metadata address, so a DNS answer cannot turn an allowed name into a way into the local network.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from tessera.errors import TesseraError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SourceRefused(TesseraError):
    """A source that ``storage.ingest_allow`` does not allow, or that resolves to a private address."""

    status = 403


class InvalidSource(TesseraError):
    """A source URL that cannot be read at all (another scheme, no host, not absolute)."""

    status = 400


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class UrlEntry:
    scheme: str
    host: str
    port: int | None
    path: str

    def allows(self, url: SplitResult) -> bool:
        return (
            url.scheme == self.scheme
            and (url.hostname or "") == self.host
            and _port(url) == self.port
            and _under(unquote(url.path) or "/", self.path)
        )

    def names_address(self, address: IPAddress) -> bool:
        """Whether this entry names ``address`` explicitly (so it may be private)."""
        if self.host == "localhost":
            return address.is_loopback
        try:
            return ipaddress.ip_address(self.host) == address
        except ValueError:
            return False


def _port(url: SplitResult) -> int | None:
    return url.port or _DEFAULT_PORTS.get(url.scheme)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _contains(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def split_source(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        raise InvalidSource(f"source {url[:200]!r} is not a valid URL: {exc}") from None
    if parts.username is not None or parts.password is not None:
        raise InvalidSource("source URLs must not carry credentials")
    return parts._replace(scheme=parts.scheme.lower())


class AllowList:
    """The parsed ``storage.ingest_allow`` entries."""

    def __init__(self, entries: list[str]) -> None:
        self.roots: list[str] = []
        self.urls: list[UrlEntry] = []
        self.buckets: list[tuple[str, str]] = []
        for entry in entries:
            parts = split_source(entry)
            if parts.scheme == "file":
                self.roots.append(os.path.realpath(unquote(parts.path)))
            elif parts.scheme == "s3" and parts.netloc:
                self.buckets.append((parts.netloc, parts.path.lstrip("/")))
            elif parts.scheme in _DEFAULT_PORTS and parts.hostname:
                path = unquote(parts.path) or "/"
                self.urls.append(UrlEntry(parts.scheme, parts.hostname, _port(parts), path))
            else:
                raise InvalidSource(
                    f"storage.ingest_allow entry {entry!r} is not a file://, s3:// or http(s):// URL"
                )

    def local_root(self, url: str) -> tuple[str, str]:
        """For a ``file://`` source: the allowed root it lies in and its real path."""
        parts = split_source(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidSource(f"{url[:200]!r} is not a file:/// URL")
        real = os.path.realpath(unquote(parts.path))
        for root in self.roots:
            if _contains(root, real):
                return root, real
        raise SourceRefused("source is not under any file:// root of storage.ingest_allow")

    def url_entry(self, url: str) -> UrlEntry:
        """For an http(s) source: the entry that allows it."""
        parts = split_source(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise InvalidSource(f"{url[:200]!r} is not an http(s) URL with a host")
        for entry in self.urls:
            if entry.allows(parts):
                return entry
        raise SourceRefused(f"{parts.scheme}://{parts.netloc} is not allowed by storage.ingest_allow")

    def s3_source(self, url: str) -> tuple[str, str]:
        """For an ``s3://`` source: its bucket and key prefix."""
        parts = split_source(url)
        bucket, prefix = parts.netloc, unquote(parts.path).lstrip("/")
        if parts.scheme != "s3" or not bucket:
            raise InvalidSource(f"{url[:200]!r} is not an s3://bucket/prefix URL")
        for allowed_bucket, allowed_prefix in self.buckets:
            if bucket == allowed_bucket and (
                not allowed_prefix or _under(prefix, allowed_prefix.rstrip("/"))
            ):
                return bucket, prefix
        raise SourceRefused(f"s3://{bucket}/ is not allowed by storage.ingest_allow")


def check_address(entry: UrlEntry, address: IPAddress) -> None:
    """Refuse a connection to ``address`` unless it is public or ``entry`` names it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_global and not address.is_multicast:
        return
    if entry.names_address(address):
        return
    raise SourceRefused(
        "source resolves to a private, loopback, link-local or reserved address; "
        "list that address itself in storage.ingest_allow to allow it"
    )

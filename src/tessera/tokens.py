"""Bearer tokens: ``server.token`` (every scope, every path) and scoped ``[tokens.NAME]`` entries.

A scoped token is ``tsr_<id>_<secret>``: a public id that finds its entry without trying every hash,
and 256 random bits. The config keeps only ``sha256:<id>:<salt>:<digest>``, the SHA-256 of a random
salt and the secret, never the token. A fast hash is enough here: a slow one (argon2, bcrypt) protects
guessable passwords, and 256 random bits cannot be guessed, however fast each try is; it also keeps
each authorised request at about a microsecond of hashing, with no cache of verified tokens to bound.

Scopes are independent: ``read`` (objects of mounts with ``public = false``), ``write`` (uploads,
deletes, ingest, imports), ``admin`` (cache operations, stats details, others' jobs). None implies
another, so a token can be made for exactly what it must do (a write-only drop box, a cache operator
who cannot read private mounts). ``prefixes`` bound the virtual paths a token may touch, segment by
segment: ``/images`` covers ``/images`` and ``/images/a`` but not ``/imagesX``.

Nothing here knows HTTP: :meth:`TokenRegistry.check` says what to answer (401, 403 or nothing) and
the web layers (``web.auth``, the IIIF layer) turn that into their own kind of response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")

TOKEN_PREFIX = "tsr_"
_ID = re.compile(r"[0-9a-f]{12}")
_HASH = re.compile(r"sha256:(?P<id>[0-9a-f]{12}):(?P<salt>[A-Za-z0-9_-]{22}):(?P<digest>[0-9a-f]{64})")


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8", "surrogatepass")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class TokenHash:
    """What the config holds of a token: its id, a salt and the salted SHA-256 of its secret."""

    token_id: str
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> TokenHash:
        match = _HASH.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                "not a token hash (expected sha256:<id>:<salt>:<digest>, as `tessera token new` prints)"
            )
        salt = base64.urlsafe_b64decode(match["salt"] + "==")
        return cls(match["id"], salt, bytes.fromhex(match["digest"]))

    def __str__(self) -> str:
        return f"sha256:{self.token_id}:{_b64(self.salt)}:{self.digest.hex()}"

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(_digest(self.salt, secret), self.digest)


def new_token() -> tuple[str, TokenHash]:
    """A fresh token (shown once) and the hash to put in the config."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", TokenHash(token_id, salt, _digest(salt, secret))


def split_token(token: str) -> tuple[str, str] | None:
    """``tsr_<id>_<secret>`` -> ``(id, secret)``; None for anything else."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not secret or not _ID.fullmatch(token_id):
        return None
    return token_id, secret


# ---------------------------------------------------------------- prefixes

Segments = tuple[str, ...]


def prefix_segments(prefix: str) -> Segments:
    """The segments of a configured prefix (``/images/maps`` -> ``("images", "maps")``, ``/`` -> ``()``).

    Raises ValueError for a prefix that is not an absolute virtual path of plain segments.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"prefix {prefix!r} must start with / (a virtual path such as /images)")
    body = prefix.strip("/")
    segments = tuple(body.split("/")) if body else ()
    if any(segment in ("", ".", "..") or "\\" in segment for segment in segments):
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return segments


def check_prefix(prefix: str) -> str:
    """A configured prefix in its canonical spelling (``/images/`` -> ``/images``)."""
    return "/" + "/".join(prefix_segments(prefix))


def covers(prefix: Segments, path: Segments) -> bool:
    """Whether ``prefix`` covers ``path``: the path itself or anything under it, on segment boundaries."""
    return path[: len(prefix)] == prefix


# ---------------------------------------------------------------- the registry


class TokenEntry(Protocol):
    """A ``[tokens.NAME]`` section (``config.TokenSettings``)."""

    @property
    def hash(self) -> str: ...
    @property
    def scopes(self) -> Sequence[str]: ...
    @property
    def prefixes(self) -> Sequence[str] | None: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token may do. ``prefixes`` None: every path."""

    name: str
    scopes: frozenset[str]
    prefixes: tuple[Segments, ...] | None

    def allows(self, path: Segments) -> bool:
        return self.prefixes is None or any(covers(prefix, path) for prefix in self.prefixes)


ALL = Grant("server.token", frozenset(SCOPES), None)


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request may not go on: 401 (no or an unknown token) or 403 (not allowed)."""

    status: int
    detail: str


class TokenRegistry:
    """The tokens of one configuration, looked up by the ``Authorization`` header."""

    def __init__(self, server_token: str | None, tokens: Mapping[str, TokenEntry]) -> None:
        self._server_token = server_token.encode() if server_token else None
        self._entries: dict[str, tuple[TokenHash, Grant]] = {}
        for name, entry in tokens.items():
            token_hash = TokenHash.parse(entry.hash)
            prefixes = None if entry.prefixes is None else tuple(prefix_segments(p) for p in entry.prefixes)
            self._entries[token_hash.token_id] = (token_hash, Grant(name, frozenset(entry.scopes), prefixes))
        #: Compared against when a token's id is unknown, so that costs what a known id does.
        self._decoy = new_token()[1]

    @property
    def enabled(self) -> bool:
        """Whether any token can be valid (otherwise what needs one is switched off)."""
        return self._server_token is not None or bool(self._entries)

    def identify(self, authorization: str | None) -> Grant | None:
        """The grant of the bearer token in an ``Authorization`` header value, if it is a valid one."""
        if not authorization:
            return None
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        token = given.strip()
        if self._server_token is not None and hmac.compare_digest(token.encode(), self._server_token):
            return ALL
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        token_hash, grant = self._entries.get(token_id, (self._decoy, None))
        return grant if token_hash.matches(secret) and grant is not None else None

    def judge(self, grant: Grant | None, scope: Scope, paths: Iterable[Segments] = ()) -> Denial | None:
        """None if ``grant`` (from :meth:`identify`) may do ``scope`` on each of ``paths``, else why not."""
        if not self.enabled:
            return Denial(403, f"{_WHAT[scope]} disabled: set server.token or add [tokens.NAME] entries")
        if grant is None:
            return Denial(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")
        if scope not in grant.scopes:
            return Denial(403, f"token {grant.name} does not have the {scope} scope")
        for path in paths:
            if not grant.allows(path):
                shown = "/" + "/".join(path)
                return Denial(403, f"token {grant.name} may not touch {shown} (outside its prefixes)")
        return None

    def check(self, authorization: str | None, scope: Scope, paths: Iterable[Segments] = ()) -> Denial | None:
        """:meth:`judge` of the token in an ``Authorization`` header value."""
        return self.judge(self.identify(authorization), scope, paths)


_WHAT: dict[str, str] = {
    "read": "reads of non-public mounts are",
    "write": "writes are",
    "admin": "cache operations are",
}

"""The bearer token from ``server.token``: required by write endpoints (off while none is configured),
and optional on reads that show more to those who hold it."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

#: Declares the scheme in the OpenAPI document; the checks below give the errors their wording.
bearer = HTTPBearer(auto_error=False, description="`server.token`, sent as `Authorization: Bearer …`")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def token_given(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """Whether the request carries the configured token."""
    expected = request.app.state.settings.server.token
    return bool(
        expected
        and credentials is not None
        and hmac.compare_digest(credentials.credentials.encode(), expected.encode())
    )


def require_token(request: Request, credentials: BearerCredentials) -> None:
    if not request.app.state.settings.server.token:
        raise HTTPException(403, "write endpoints are disabled: set server.token (TESSERA_SERVER__TOKEN)")
    if not token_given(request, credentials):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


#: What a token may do: read objects of non-public mounts, write (upload, delete, ingest, import), or
#: administer the cache (warm, pin, purge, jobs of others, stats details).
Scope = Literal["read", "write", "admin"]


def authorize(request: Request, scope: Scope, paths: Iterable[str] = ()) -> None:
    """Raise 401 (no or an unknown token) or 403 (a token without ``scope``, or not allowed every one
    of ``paths``) unless the request's bearer token may do ``scope`` on ``paths``.

    Today only ``server.token`` exists (all scopes, every path); scoped tokens come with ``[tokens]``.
    """
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    credentials = (
        HTTPAuthorizationCredentials(scheme=scheme, credentials=given.strip())
        if scheme.lower() == "bearer"
        else None
    )
    require_token(request, credentials)

"""The bearer token from ``server.token``: required by write endpoints (off while none is configured),
and optional on reads that show more to those who hold it."""

from __future__ import annotations

import hmac
from typing import Annotated

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

"""Write endpoints need the bearer token from ``server.token``; without one configured, writes are off."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request


def require_token(request: Request) -> None:
    expected = request.app.state.settings.server.token
    if not expected:
        raise HTTPException(403, "write endpoints are disabled: set server.token (TESSERA_SERVER__TOKEN)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

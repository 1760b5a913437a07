"""Bearer tokens on the HTTP API: :func:`authorize` is the one check every protected endpoint makes.

The token comes only from the ``Authorization: Bearer`` header (never a query string or a cookie, which
end up in logs, histories and caches). ``tessera.tokens`` holds the rules; this module turns their
verdict into FastAPI's errors: 401 with ``WWW-Authenticate: Bearer`` for no or an unknown token, 403 with
the reason for a token that may not do this, 403 for everything when no token is configured at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tessera.config import Settings
from tessera.namespace import split_path
from tessera.tokens import Denial, Scope, Segments, TokenRegistry

__all__ = ["Scope", "authorize", "bearer", "denial_for", "read_allowed", "registry", "require", "token_given"]

#: Declares the scheme in the OpenAPI document; :func:`authorize` gives the errors their wording.
bearer = HTTPBearer(
    auto_error=False,
    description="`server.token` (every scope) or a `[tokens.NAME]` token, as `Authorization: Bearer …`",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def registry(state: Any) -> TokenRegistry:
    """The tokens of the application's settings, built on first use and kept on ``app.state``."""
    tokens: TokenRegistry | None = getattr(state, "tokens", None)
    if tokens is None:
        settings: Settings = state.settings
        tokens = state.tokens = TokenRegistry(settings.server.token, settings.tokens)
    return tokens


def path_segments(path: str) -> Segments:
    """A virtual path or prefix as the namespace reads it (``InvalidPath``, a 400, for ``..`` and the
    like), so a token's prefixes are matched against exactly the path that will be served."""
    mount, key = split_path(path, allow_prefix=True)
    return (mount, *key.split("/")) if key else (mount,)


def denial_for(state: Any, authorization: str | None, scope: Scope, paths: Iterable[str]) -> Denial | None:
    """What :func:`authorize` decides, for layers below FastAPI (the IIIF one): None to go on."""
    tokens = registry(state)
    grant = tokens.identify(authorization)
    return tokens.judge(grant, scope) or tokens.judge(grant, scope, [path_segments(p) for p in paths])


def authorize(request: Request, scope: Scope, paths: Iterable[str] = ()) -> None:
    """Raise 401 (no or an unknown token) or 403 (a token without ``scope``, or not allowed every one
    of ``paths``, or no token configured at all) unless the request's bearer token may do ``scope`` on
    ``paths``. An invalid path is an ``InvalidPath`` (400), checked once the token is known good."""
    denial = denial_for(request.app.state, request.headers.get("authorization"), scope, paths)
    if denial is not None:
        headers = {"WWW-Authenticate": "Bearer"} if denial.status == 401 else None
        raise HTTPException(denial.status, denial.detail, headers=headers)


def token_given(request: Request, *, scope: Scope = "admin", path: str = "/") -> bool:
    """Whether the request carries a token that may do ``scope`` on ``path`` (``/``: everything), for
    answers that show more to those who hold one and stay public otherwise."""
    segments = () if path == "/" else path_segments(path)
    return registry(request.app.state).check(request.headers.get("authorization"), scope, [segments]) is None


def read_allowed(settings: Settings, path: str) -> bool:
    """Whether ``path`` may be read without a token: its mount is public (or unknown, which the read
    answers with 404 itself). A dictionary lookup: public mounts stay as fast as they were."""
    mount = settings.mounts.get(path.lstrip("/").partition("/")[0])
    return mount is None or mount.public


def require(scope: Scope) -> Any:
    """A route dependency checking the token and ``scope`` before the body is read; the route then calls
    :func:`authorize` with its paths. It also declares the bearer scheme in the OpenAPI document."""

    def check(request: Request, _credentials: BearerCredentials) -> None:
        authorize(request, scope)

    return Depends(check)

"""Reads of a mount with ``public = false`` need a token with the ``read`` scope."""

from __future__ import annotations

from fastapi import Request

from tessera.errors import TesseraError
from tessera.namespace import split_path
from tessera.web.auth import authorize


def authorize_read(request: Request, path: str) -> None:
    """Raise 401/403 unless the mount ``path`` lies in is public or the request may read ``path``.

    A malformed path or an unknown mount is left to the route, which reports it in its own terms.
    """
    try:
        mount, _key = split_path(path, allow_prefix=True)
    except TesseraError:
        return
    settings = request.app.state.settings.mounts.get(mount)
    if settings is not None and not settings.public:
        authorize(request, "read", [path])

"""Every error leaves as JSON with a reason a user can act on, never as a bare 500.

Origin trouble is told in the user's terms only ("origin images failed reading maps/a.tif"): the
underlying messages carry origin URLs, endpoints and the storage library's multi-line debug output,
which belong in the server log and nowhere else.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from tessera.errors import OriginTimeout, OriginUnavailable, OriginUnsupported, TesseraError

log = logging.getLogger(__name__)

#: Longest piece of a client's own input quoted back in a validation error.
QUOTE_LIMIT = 100


class ErrorBody(BaseModel):
    """The body of every error the JSON API answers."""

    error: str
    detail: str


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def public_detail(exc: TesseraError, virtual_path: str | None) -> str:
    """What a client is told about ``exc``, raised while answering a request about ``virtual_path``.

    Origin failures and timeouts name the mount and key, never how the origin was reached; every
    other error's message (an origin that cannot serve a request at all included) is already in the
    user's terms.
    """
    if isinstance(exc, OriginUnsupported) or not isinstance(exc, OriginUnavailable | OriginTimeout):
        return str(exc)  # written for users: what cannot be done and why, no URL
    what = "timed out" if isinstance(exc, OriginTimeout) else "failed"
    mount, _, key = (virtual_path or "").strip("/").partition("/")
    if not key:
        return f"an origin {what} (details in the server log)"
    return f"origin {mount} {what} reading {key}"


def _validation_detail(exc: RequestValidationError) -> str:
    """Each problem as ``where: what``, without echoing the (possibly huge) input."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}"[:QUOTE_LIMIT])
    return "; ".join(problems) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TesseraError)
    async def _tessera_error(request: Request, exc: TesseraError) -> JSONResponse:
        path = request.path_params.get("path")
        detail = public_detail(exc, f"/{path}" if path is not None else None)
        if detail != str(exc):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(exc.status, type(exc).__name__, detail)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        response = error_response(exc.status_code, name, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "InvalidRequest", _validation_detail(exc))

    # The link map's (SQLAlchemy) failures have a handler of their own: one for ``Exception`` runs in
    # Starlette's outermost middleware, which logs a traceback after it.
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_unreachable(exc):
            return await _database_down(request, exc)
        log.exception("unexpected error")
        return error_response(500, "InternalError", "unexpected server error; see the server log")


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: the database is unreachable: %s", request.method, request.url.path, exc)
    response = error_response(503, "DatabaseUnavailable", "the database is unreachable; try again shortly")
    response.headers["Retry-After"] = "5"
    return response


#: Exceptions (by class name, anywhere in their class hierarchy) that mean the link map's or the job
#: queue's database cannot be reached: SQLAlchemy's and psycopg's ``OperationalError``,
#: Procrastinate's ``ConnectorException``. Matched by name so this module imports none of them.
_UNREACHABLE = {"OperationalError", "ConnectorException", "PoolTimeout"}
_DATABASE_LIBRARIES = ("sqlalchemy", "psycopg", "psycopg_pool", "procrastinate", "sqlite3")


def database_unreachable(exc: BaseException) -> bool:
    """A database library's connection-level failure (a 503 for the client, not a 500)."""
    for cause in (exc, exc.__cause__):
        if cause is None:
            continue
        for cls in type(cause).__mro__:
            if cls.__name__ in _UNREACHABLE and cls.__module__.split(".")[0] in _DATABASE_LIBRARIES:
                return True
    return False

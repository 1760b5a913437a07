"""User errors of the ``tessera`` command: one line each and a non-zero exit, never a traceback.

A user error is one the user can fix: settings that cannot be used (``ConfigError``), a path, origin
or cache problem the engine reports (``TesseraError``: an unsupported origin, a missing object, a
cache directory owned by another process), or the operating system refusing a file or directory
(``OSError``: an unwritable cache directory, a missing config file). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tessera.config import ConfigError
from tessera.errors import TesseraError

USER_ERRORS = (ConfigError, TesseraError, OSError)

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]


def describe(error: BaseException) -> list[str]:
    """The lines that report ``error``: one per problem (a config error may list several)."""
    if isinstance(error, ConfigError):
        return str(error).splitlines()
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return [f"{error.filename}: {error.strerror}"]
    return [" ".join(str(error).split()) or type(error).__name__]  # e.g. an origin's multi-line dump


def exit_code(error: BaseException) -> int:
    """2 for settings that cannot be used (as for a bad command line), 1 for the rest."""
    return 2 if isinstance(error, ConfigError) else 1


class StartupErrors:
    """ASGI wrapper that keeps a user error raised while the application starts (in its lifespan).

    Starlette reports a failed start-up to the server with the whole traceback, which uvicorn logs;
    for a user error this wrapper reports the failure without it and keeps the error in ``error``,
    so that ``tessera serve`` can print it as one line once uvicorn has given up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.error: BaseException | None = None

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        failed: Message | None = None

        async def hold_failure(message: Message) -> None:
            nonlocal failed
            if message["type"] == "lifespan.startup.failed":
                failed = message  # sent below, once it is known whose error it is
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except USER_ERRORS as error:
            if failed is None:
                raise
            self.error = error
            failed = {"type": "lifespan.startup.failed", "message": ""}
        finally:
            if failed is not None:
                await send(failed)

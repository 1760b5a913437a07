"""Shared fixtures: real origin servers on 127.0.0.1, and the event loop that async tests run in."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.engines import make_settings as make_settings  # kept importable from here
from tests.support.moto_server import MotoServer
from tests.support.origin_server import ObjectHTTPServer
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.proxy import CountingProxy


@pytest.fixture
def anyio_backend() -> str:
    """``@pytest.mark.anyio`` tests run on asyncio only: the engine is built on asyncio's APIs."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's TESSERA_* or AWS_* settings."""
    for name in list(os.environ):
        if name.startswith(("TESSERA_", "AWS_")):
            monkeypatch.delenv(name)


@pytest.fixture
def http_origin() -> Iterator[ObjectHTTPServer]:
    with ObjectHTTPServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_proxy(moto: MotoServer) -> Iterator[CountingProxy]:
    with CountingProxy(moto.endpoint) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (each test takes a database of its own: ``postgres.url()``)."""
    with postgres_server() as server:
        yield server

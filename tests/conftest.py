"""Shared fixtures: real origin servers on 127.0.0.1 and engine settings pointing at them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tessera.config import Settings, load_settings
from tests.support.moto_server import MotoServer
from tests.support.origin_server import ObjectHTTPServer
from tests.support.proxy import CountingProxy

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_settings(cache_dir: Path, mounts: dict[str, dict[str, Any]], **cache: Any) -> Settings:
    """Settings for tests: small blocks so objects of a few MiB span many blocks, quick retries."""
    cache_settings = {"dir": str(cache_dir), "block_size": "64KB", "small_object_size": "64KB", **cache}
    return load_settings(
        None,
        cache=cache_settings,
        mounts=mounts,
        origin={"retries": 3, "backoff": "10ms", "max_backoff": "50ms", "read_timeout": "5s"},
    )


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

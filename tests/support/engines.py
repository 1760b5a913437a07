"""The one way tests build a cache engine: test settings (small blocks, quick retries) and an engine
that is started on entry and always closed on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tessera.cache import CacheEngine
from tessera.config import Settings, load_settings

ORIGIN = {"retries": 3, "backoff": "10ms", "max_backoff": "50ms", "read_timeout": "5s"}


def make_settings(
    cache_dir: str | Path,
    mounts: dict[str, dict[str, Any]],
    *,
    origin: dict[str, Any] | None = None,
    **cache: Any,
) -> Settings:
    """Settings for tests: small blocks so objects of a few MiB span many blocks, quick retries.

    ``cache`` overrides ``[cache]`` keys, ``origin`` overrides ``[origin]`` keys.
    """
    cache_settings = {"dir": str(cache_dir), "block_size": "64KB", "small_object_size": "64KB", **cache}
    return load_settings(None, cache=cache_settings, mounts=mounts, origin={**ORIGIN, **(origin or {})})


@asynccontextmanager
async def open_engine(
    cache_dir: str | Path,
    mounts: dict[str, dict[str, Any]],
    *,
    origin: dict[str, Any] | None = None,
    **cache: Any,
) -> AsyncIterator[CacheEngine]:
    """A started engine on ``make_settings(cache_dir, mounts, origin=origin, **cache)``, closed on exit
    (also when the body fails, so the cache directory's lock is released)."""
    async with CacheEngine(make_settings(cache_dir, mounts, origin=origin, **cache)) as engine:
        yield engine

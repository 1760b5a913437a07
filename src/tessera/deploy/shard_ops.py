"""Cache operations on a node of shards (``tessera serve --workers N``), for the ``tessera`` commands.

The front routes by the URL, and ``warm``, ``pin``, ``unpin``, ``purge`` name their object in the
body, so through the front they would all reach the one control shard. The commands talk to the
shards' sockets instead: ``purge`` and ``unpin`` go to every shard (an object may be cached wherever
its home was before a change of N), ``warm`` and ``pin`` send each object to its home shard (a
prefix is listed first), and ``stats`` adds up every shard's figures.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tessera.deploy.nginx import object_key
from tessera.deploy.ring import Ring
from tessera.deploy.shards import SOCKET_NAME, shard_dir


class ShardRefused(Exception):
    """A shard answered an operation with an error status."""


def live_shards(cache_dir: Path) -> list[Path]:
    """The sockets of the running shards under ``cache_dir``: shard-0, shard-1, … up to the first
    that does not answer (empty: this is no node of shards)."""
    sockets: list[Path] = []
    while (socket := shard_dir(cache_dir.resolve(), len(sockets)) / SOCKET_NAME).exists():
        try:
            with _client(socket) as client:
                client.get("/healthz", timeout=5)
        except httpx.HTTPError:
            break
        sockets.append(socket)
    return sockets


def _client(socket: Path, headers: dict[str, str] | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(socket))
    return httpx.Client(transport=transport, base_url="http://shard", headers=headers, timeout=None)


class ShardedNode:
    """The shards of one node, reached on their sockets with the caller's ``Authorization``."""

    def __init__(self, sockets: list[Path], headers: dict[str, str], hosting_mount: str = "hosted") -> None:
        self.sockets = sockets
        self.headers = headers
        self.hosting_mount = hosting_mount
        self.ring = Ring([f"unix:{s}" for s in sockets])

    def request(self, shard: int, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        with _client(self.sockets[shard], self.headers) as client:
            response = client.request(method, url, **kwargs)
        if response.status_code != 200:
            text = " ".join(response.text.split())
            raise ShardRefused(f"shard {shard} answered {response.status_code}: {text}")
        answer: dict[str, Any] = response.json()
        return answer

    def home(self, path: str) -> int:
        return self.ring.node(object_key(path, self.hosting_mount))

    def everywhere(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``action`` on every shard; the numbers in the answers added up."""
        answers = [
            self.request(k, "POST", f"/api/v1/cache/{action}", json=payload) for k in range(len(self.sockets))
        ]
        return merge(answers)

    def objects_at(self, path: str) -> list[str]:
        """The object at ``path`` if there is one (and ``path`` does not end in ``/``), else every object
        under that prefix, from the listing API."""
        if not path.endswith("/"):
            with _client(self.sockets[self.home(path)], self.headers) as client:
                if client.head(f"/api/v1/files{path}").status_code == 200:
                    return [path]
        found: list[str] = []
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else {}
            page = self.request(0, "GET", f"/api/v1/list/{path.lstrip('/')}", params=params)
            found += [item["path"] for item in page["items"]]
            cursor = page.get("next")
            if not cursor:
                return found

    def at_home(
        self,
        action: str,
        payload: dict[str, Any],
        concurrency: int = 4,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """``action`` (warm, pin) on each object under ``payload["path"]``, each on its home shard."""

        def one(target: str) -> dict[str, Any]:
            answer = self.request(
                self.home(target), "POST", f"/api/v1/cache/{action}", json=payload | {"path": target}
            )
            if progress is not None:
                progress(answer)
            return answer

        targets = self.objects_at(payload["path"])
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return merge(list(pool.map(one, targets)))

    def stats(self, top: int) -> dict[str, Any]:
        answers = [
            self.request(k, "GET", "/api/v1/cache/stats", params={"top": top})
            for k in range(len(self.sockets))
        ]
        merged = merge(answers)
        if isinstance(merged.get("top"), list):
            merged["top"] = sorted(merged["top"], key=lambda row: -row.get("hits", 0))[:top]
        return merged


def merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' answers as one: numbers added, lists joined, dicts merged key by key, the first of
    anything else."""
    merged: dict[str, Any] = {}
    for answer in answers:
        for key, value in answer.items():
            merged[key] = _combine(merged[key], value) if key in merged else value
    return merged


def _combine(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return merge([a, b])
    return a

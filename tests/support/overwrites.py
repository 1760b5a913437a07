"""Readers of one object through the files API while the test overwrites it at the origin.

Every answer must be one version whole: a 200 or 206 whose bytes are exactly those of one version
the object has had (at the offsets the response says), or a clean refusal (416 past the end of a
shorter version, 502 for a change noticed while reading, or a response cut short, which the client
sees as a transport error because the length does not add up). Anything else is recorded as a mix.
"""

from __future__ import annotations

import random
import threading
from types import TracebackType
from typing import Self

import httpx


def version_bytes(number: int, size: int) -> bytes:
    """Content unique to one version at every offset, so any mix of two versions is visible."""
    return random.Random(number).randbytes(size)


class OverwriteReaders:
    """Threads reading ``url`` (whole, or a random range within ``max_offset``) until the block ends."""

    def __init__(self, base: str, url: str, first: bytes, readers: int = 4, max_offset: int = 800_000):
        self.versions = [first]
        self.mixed: list[str] = []
        self.whole = 0
        self._base, self._url, self._max_offset = base, url, max_offset
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(seed,)) for seed in range(readers)]

    def new_version(self, data: bytes) -> None:
        """Call before the origin gets ``data``: from then on it is a version a reader may see."""
        with self._lock:
            self.versions.append(data)

    def problem(self, response: httpx.Response) -> str | None:
        """None if the response is one version whole (or a clean refusal), else what is wrong."""
        if response.status_code in (416, 502):
            return None
        if response.status_code == 200:
            start, total = 0, len(response.content)
        elif response.status_code == 206:
            span, _, size = response.headers["content-range"].removeprefix("bytes ").partition("/")
            start, total = int(span.split("-")[0]), int(size)
        else:
            return f"status {response.status_code}: {response.text[:200]}"
        body = response.content
        with self._lock:
            versions = list(self.versions)
        if any(len(v) == total and v[start : start + len(body)] == body for v in versions):
            return None
        return f"{response.status_code} {response.headers.get('content-range')}: bytes of no single version"

    def _read(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self._base, timeout=30) as client:
            while not self._stop.is_set():
                headers = {}
                if rng.random() < 0.5:
                    first = rng.randrange(0, self._max_offset)
                    headers["Range"] = f"bytes={first}-{first + rng.randrange(1, self._max_offset // 2)}"
                try:
                    response = client.get(self._url, headers=headers)
                except httpx.TransportError:
                    continue  # a change after the first byte aborts the response: never a mix
                found = self.problem(response)
                with self._lock:
                    if found is not None:
                        self.mixed.append(found)
                    elif response.status_code < 300:
                        self.whole += 1

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

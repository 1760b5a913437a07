"""Directory listings for the FUSE view: one origin listing per directory per TTL, shared by all callers.

``ls -l`` of a directory with 100k objects costs one paged listing (1,000 keys per request on S3),
not a HEAD per ``stat``: the listing also seeds the engine's object metadata.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.errors import InvalidPath
from tessera.namespace import split_path
from tessera.origins import ObjectInfo, Origin

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Listing:
    """One directory level: sub-directory names and objects by name, sorted for stable readdir offsets."""

    dirs: list[str] = field(default_factory=list)
    files: dict[str, ObjectInfo] = field(default_factory=dict)
    fetched: float = 0.0
    #: False when the origin cannot list (plain HTTP): lookups then ask the origin name by name.
    complete: bool = True
    #: In a listing that is not complete: the names looked up so far (None: a directory), in order.
    found: dict[str, ObjectInfo | None] = field(default_factory=dict)
    #: ``names()`` of a complete listing, built on first use: the kernel asks for a large directory a
    #: page at a time, and sorting 200k names for every page cost about 380 ms a call.
    _entries: list[tuple[str, ObjectInfo | None]] | None = None

    def names(self) -> list[tuple[str, ObjectInfo | None]]:
        """Directories, then objects by name: the order readdir offsets index into."""
        if not self.complete:
            return list(self.found.items())
        if self._entries is None:
            self._entries = [(d, None) for d in self.dirs] + [(n, self.files[n]) for n in sorted(self.files)]
        return self._entries

    def remember(self, name: str, info: ObjectInfo | None, max_names: int) -> None:
        """Note a name found by a lookup in a listing that is not complete (readdir then shows it).

        Names are only added (offsets of a readdir under way stay valid), up to ``max_names``.
        """
        if name in self.found or len(self.found) < max_names:
            self.found[name] = info


def representable(mount: str, key: str) -> bool:
    """Whether a key can appear as a path in the mount (no empty, ``.``/``..``, over-long segments…)."""
    try:
        split_path(f"/{mount}/{key}")
    except InvalidPath:
        return False
    return True


class ListingCache:
    def __init__(
        self,
        mount: str,
        origin: Origin,
        ttl: float,
        max_names: int,
        on_objects: Callable[[list[ObjectInfo], float], None] | None = None,
    ) -> None:
        self.mount = mount
        self.on_objects = on_objects
        self.origin = origin
        self.ttl = ttl
        self.max_names = max_names
        self._listings: dict[str, Listing] = {}
        self._flights: dict[str, asyncio.Task[Listing]] = {}

    async def get(self, directory: str) -> Listing:
        """The listing of ``directory`` (a key prefix without trailing slash; ``""`` is the root)."""
        cached = self._listings.get(directory)
        if cached is not None and time.monotonic() - cached.fetched < self.ttl:
            return cached
        task = self._flights.get(directory)
        if task is None:
            task = asyncio.create_task(self._fetch(directory))
            self._flights[directory] = task
            task.add_done_callback(lambda _t: self._flights.pop(directory, None))
        return await asyncio.shield(task)

    async def _fetch(self, directory: str) -> Listing:
        prefix = f"{directory}/" if directory else ""
        try:
            dirs, objects = await self.origin.list_dir(prefix)
        except Exception as exc:
            log.warning("cannot list %s/%s (%s); names are looked up one by one", self.mount, prefix, exc)
            listing = Listing(fetched=time.monotonic(), complete=False)
            self._listings[directory] = listing
            return listing
        listing = Listing(fetched=time.monotonic())
        if self.on_objects is not None:
            self.on_objects(objects, time.time())
        skipped = 0
        for name in sorted(dirs):
            if representable(self.mount, f"{prefix}{name}"):
                listing.dirs.append(name)
            else:
                skipped += 1
        for info in objects:
            name = info.key[len(prefix) :]
            if not name:
                continue  # a "directory marker" object named after its prefix
            if name in listing.files or name in listing.dirs or not representable(self.mount, info.key):
                skipped += 1
                continue
            listing.files[name] = info
            if len(listing.files) + len(listing.dirs) >= self.max_names:
                log.warning("listing of %s/%s truncated at %d names", self.mount, prefix, self.max_names)
                break
        if skipped:
            log.warning(
                "skipped %d names in %s/%s that cannot be represented as paths", skipped, self.mount, prefix
            )
        self._listings[directory] = listing
        return listing

    def forget(self, directory: str) -> None:
        self._listings.pop(directory, None)

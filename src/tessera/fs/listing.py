"""Directory listings for the FUSE view: one origin listing per directory per TTL, shared by all callers.

``ls -l`` of a directory with 100k objects costs one paged listing (1,000 keys per request on S3),
not a HEAD per ``stat``: the listing also seeds the engine's object metadata.

The listings kept weigh at most what the inode table (``shared``) leaves of ``fs.listing_cache_size``
(estimated by ``listing_bytes``); the least recently used go first, and one heavier than the whole
budget is served but not kept. A listing lives on while a reader holds it (an open directory keeps the
one its readdir started with), and while it is fresh such a live listing is handed out again rather
than fetched anew, so a directory over the budget
is listed once per ``ls``, not once per name looked up in it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.errors import InvalidPath
from tessera.metrics import Metrics
from tessera.namespace import split_path
from tessera.origins import ObjectInfo, Origin

log = logging.getLogger(__name__)

# What a listing holds besides the text of its strings, measured with tracemalloc on CPython 3.11
# (``tests/test_listing_cache.py`` measures again and holds the estimate within 10 % of it):
#: the Listing and its empty containers;
LISTING_BYTES = 1500
#: each sub-directory: its list slot and its readdir entry (a tuple and a list slot);
DIR_BYTES = 75
#: each object: its dict slot, the ObjectInfo with its size and mtime, its readdir entry. Dict and
#: list slots are amortised over their growth (a dict just past a doubling costs the most per entry).
FILE_BYTES = 200


def entry_bytes(name: str, info: ObjectInfo | None) -> int:
    """Estimated bytes of one name in a listing (``info`` None: a directory)."""
    if info is None:
        return DIR_BYTES + sys.getsizeof(name)
    # In the root directory a name is its key (the same string), elsewhere a slice of it.
    name_bytes = 0 if name is info.key else sys.getsizeof(name)
    return FILE_BYTES + name_bytes + sys.getsizeof(info.key) + sys.getsizeof(info.etag)


@dataclass(slots=True, weakref_slot=True)
class Listing:
    """One directory level: sub-directory names and objects by name, sorted for stable readdir offsets."""

    dirs: list[str] = field(default_factory=list)
    files: dict[str, ObjectInfo] = field(default_factory=dict)
    fetched: float = 0.0
    #: False when the origin cannot list (plain HTTP): lookups then ask the origin name by name.
    complete: bool = True
    #: In a listing that is not complete: the names looked up so far (None: a directory), in order.
    found: dict[str, ObjectInfo | None] = field(default_factory=dict)
    #: Estimated bytes held (``listing_bytes``), kept up to date by ``ListingCache``.
    weight: int = LISTING_BYTES
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

    def remember(self, name: str, info: ObjectInfo | None, max_names: int) -> int:
        """Note a name found by a lookup in a listing that is not complete (readdir then shows it).

        Names are only added (offsets of a readdir under way stay valid), up to ``max_names``. Returns
        the bytes the listing grew by.
        """
        if name in self.found or len(self.found) >= max_names:
            return 0
        self.found[name] = info
        added = entry_bytes(name, info)
        self.weight += added
        return added


def listing_bytes(listing: Listing) -> int:
    """Estimated bytes a listing holds, its readdir order included (built by the first readdir)."""
    total = LISTING_BYTES + sum(entry_bytes(name, None) for name in listing.dirs)
    total += sum(entry_bytes(name, info) for name, info in listing.files.items())
    return total + sum(entry_bytes(name, info) for name, info in listing.found.items())


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
        max_bytes: int,
        on_objects: Callable[[list[ObjectInfo], float], None] | None = None,
        metrics: Metrics | None = None,
        shared: Callable[[], int] = lambda: 0,
    ) -> None:
        """``shared()``: bytes that something else (the inode table) holds out of the same ``max_bytes``;
        the listings kept get what it leaves."""
        self.mount = mount
        self.on_objects = on_objects
        self.origin = origin
        self.ttl = ttl
        self.max_names = max_names
        self.max_bytes = max_bytes
        self._shared = shared
        #: Estimated bytes of the listings kept.
        self.used = 0
        self._kept: OrderedDict[str, Listing] = OrderedDict()
        #: Every listing still referenced anywhere (kept, or held by an open directory or a lookup).
        self._live: weakref.WeakValueDictionary[str, Listing] = weakref.WeakValueDictionary()
        self._flights: dict[str, asyncio.Task[Listing]] = {}
        self._gauges = (metrics.listing_cache_bytes, metrics.listing_cache_entries) if metrics else None
        self._report()

    def __len__(self) -> int:
        """Listings kept."""
        return len(self._kept)

    async def get(self, directory: str) -> Listing:
        """The listing of ``directory`` (a key prefix without trailing slash; ``""`` is the root)."""
        now = time.monotonic()
        kept = self._kept.get(directory)
        if kept is not None:
            if now - kept.fetched < self.ttl:
                self._kept.move_to_end(directory)
                return kept
            self._drop(directory)  # stale: it only takes room until the new listing replaces it
        live = self._live.get(directory)
        if live is not None and now - live.fetched < self.ttl:
            self._keep(directory, live)  # in use again: most recently used
            return live
        task = self._flights.get(directory)
        if task is None:
            task = asyncio.create_task(self._fetch(directory))
            self._flights[directory] = task
            task.add_done_callback(lambda _t: self._flights.pop(directory, None))
        return await asyncio.shield(task)

    def remember(self, directory: str, listing: Listing, name: str, info: ObjectInfo | None) -> None:
        """``Listing.remember``, with the growth counted against the budget if the listing is kept."""
        added = listing.remember(name, info, self.max_names)
        if added and self._kept.get(directory) is listing:
            self.used += added
            self._shrink()
            self._report()

    def _keep(self, directory: str, listing: Listing) -> None:
        self._drop(directory)
        self._live[directory] = listing
        if listing.weight <= self.max_bytes:
            self._kept[directory] = listing
            self.used += listing.weight
            self._shrink()
        self._report()

    def _drop(self, directory: str) -> None:
        dropped = self._kept.pop(directory, None)
        if dropped is not None:
            self.used -= dropped.weight
            self._report()

    def fit(self) -> None:
        """Drop least recently used listings until the kept ones fit what ``shared`` leaves of the budget
        (called when that grew)."""
        if self.used and self.used + self._shared() > self.max_bytes:
            self._shrink()
            self._report()

    def _shrink(self) -> None:
        """Drop least recently used listings until the kept ones fit the budget."""
        room = self.max_bytes - self._shared()
        while self.used > room and self._kept:
            _directory, dropped = self._kept.popitem(last=False)
            self.used -= dropped.weight

    def _report(self) -> None:
        if self._gauges is not None:
            self._gauges[0].set(self.used)
            self._gauges[1].set(len(self._kept))

    async def _fetch(self, directory: str) -> Listing:
        prefix = f"{directory}/" if directory else ""
        try:
            dirs, objects = await self.origin.list_dir(prefix)
        except Exception as exc:
            log.warning("cannot list %s/%s (%s); names are looked up one by one", self.mount, prefix, exc)
            listing = Listing(fetched=time.monotonic(), complete=False)
            self._keep(directory, listing)
            return listing
        listing = Listing(fetched=time.monotonic())
        if self.on_objects is not None:
            self.on_objects(objects, time.time())
        skipped = 0
        dir_names: set[str] = set()
        for name in sorted(dirs):
            if representable(self.mount, f"{prefix}{name}"):
                listing.dirs.append(name)
                dir_names.add(name)
            else:
                skipped += 1
        for info in objects:
            name = info.key[len(prefix) :]
            if not name:
                continue  # a "directory marker" object named after its prefix
            if name in listing.files or name in dir_names or not representable(self.mount, info.key):
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
        listing.weight = listing_bytes(listing)
        if listing.weight > self.max_bytes:
            log.info(
                "listing of %s/%s (%d bytes) is larger than fs.listing_cache_size: served, not kept",
                self.mount,
                prefix,
                listing.weight,
            )
        self._keep(directory, listing)
        return listing

"""Which object version the kernel holds for each file: the attributes it was given, and its page cache.

The kernel keeps one size and one page cache per inode, shared by every open file of it, and it reads
from its page cache and cuts reads at that size without asking us. So a reader sees one version whole
only if both belong to the version it reads. The rules that keep it so:

* A file opened while no handle of another version reads through the page cache uses the page cache.
  If its version is not the one whose pages or size the kernel holds, both are invalidated before the
  open is answered, so its reads and ``stat`` show the new version whole.
* A file opened while handles of an older version still read through the page cache bypasses it
  (direct I/O): it reads its own version, whole, and never puts bytes in the shared cache. The kernel
  keeps the older version's size meanwhile (reported with no caching), so the older readers are never
  cut short; once their last handle closes, ``stat`` shows the new version.

Every handle therefore reads the version it opened; the engine's ``If-Match`` fills make that EIO if
the version can no longer be had, never other bytes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tessera.origins import ObjectInfo

log = logging.getLogger(__name__)


#: Estimated bytes of one file's state: the ``_FileState``, its dict slot and number (190 B), and the
#: ``ObjectInfo`` it keeps alive once the listing it came from is gone (270 B with its key and ETag),
#: measured with tracemalloc on CPython 3.11 during a walk of 300k objects whose attributes the kernel
#: asked for again.
STATE_BYTES = 460


@dataclass(slots=True)
class OpenMode:
    """How the kernel should treat a new open file."""

    direct_io: bool
    keep_cache: bool


@dataclass(slots=True)
class _FileState:
    #: The newest version seen (listing, stat or open), and when (``time.monotonic``).
    newest: ObjectInfo | None = None
    seen_at: float = -math.inf
    #: ETag of the attributes last given to the kernel.
    shown: str | None = None
    #: The version whose bytes the kernel's page cache may hold, and its open page-cache handles.
    cached: ObjectInfo | None = None
    readers: int = 0
    #: The invalidation of the kernel's attributes and pages under way, if any.
    settling: asyncio.Task[None] | None = None


class KernelVersions:
    """Per file inode: what the kernel was told, and how each new open must read (see module doc).

    ``invalidate(inode)`` drops the kernel's attributes and cached pages of an inode; it blocks until
    the kernel is done, so it runs in a worker thread (a page the kernel has locked for a read of the
    same inode is only released once the event loop answers that read). ``ttl`` is how long what we
    learn of an object is trusted (``cache.metadata_ttl``).
    """

    def __init__(
        self, invalidate: Callable[[int], None], ttl: float, charge: Callable[[int], None] = lambda n: None
    ) -> None:
        """``charge(nbytes)`` is told of the estimated bytes of each state kept and freed (``STATE_BYTES``):
        the inode table counts them in its budget, since a state lives as long as its inode."""
        self._invalidate = invalidate
        self._ttl = ttl
        self._charge = charge
        self._files: dict[int, _FileState] = {}

    def _state(self, inode: int) -> _FileState:
        state = self._files.get(inode)
        if state is None:
            state = self._files[inode] = _FileState()
            self._charge(STATE_BYTES)
        return state

    def attributes(self, inode: int, info: ObjectInfo, seen_at: float) -> tuple[ObjectInfo, float]:
        """The version to report to the kernel for ``info`` seen at ``seen_at``, and for how long.

        A newer version seen since (an open or ``stat`` after the listing ``info`` came from) wins, and
        the kernel keeps it until it is ``ttl`` old. While page-cache handles of another version are
        open, that version is reported instead, not to be kept.
        """
        state = self._state(inode)
        if seen_at >= state.seen_at:
            state.newest, state.seen_at = info, seen_at
        assert state.newest is not None
        if state.readers and state.cached is not None and state.cached.etag != state.newest.etag:
            state.shown = state.cached.etag
            return state.cached, 0.0
        state.shown = state.newest.etag
        return state.newest, max(0.0, self._ttl - (time.monotonic() - state.seen_at))

    def listed(self, inode: int, info: ObjectInfo, seen_at: float) -> tuple[ObjectInfo, float] | None:
        """``attributes`` for a readdir entry of an inode already tracked; None for one that is not.

        Nothing is kept for an untracked inode (a walk of millions of names would keep a state for
        each): its attributes are the listing's, and its first ``open`` settles the kernel's view.
        """
        if inode not in self._files:
            return None
        return self.attributes(inode, info, seen_at)

    async def open(self, inode: int, info: ObjectInfo) -> OpenMode:
        """Account a new open file of version ``info``; returns how the kernel must read it."""
        state = self._state(inode)
        state.newest, state.seen_at = info, time.monotonic()
        cached_etag = state.cached.etag if state.cached is not None else None
        if state.readers and cached_etag != info.etag:
            return OpenMode(direct_io=True, keep_cache=True)
        keep_cache = cached_etag == info.etag
        stale_pages = cached_etag is not None and not keep_cache
        if stale_pages or state.shown != info.etag:
            state.shown = info.etag
            state.settling = asyncio.create_task(self._drop_kernel_view(inode))
        state.cached = info
        state.readers += 1
        if state.settling is not None:
            await asyncio.shield(state.settling)
        return OpenMode(direct_io=False, keep_cache=keep_cache)

    def forget(self, inode: int) -> None:
        """The kernel dropped the inode (with its attributes and pages; no file of it is open)."""
        if self._files.pop(inode, None) is not None:
            self._charge(-STATE_BYTES)

    def release(self, inode: int, mode: OpenMode) -> None:
        """An open file of ``inode`` opened with ``mode`` was closed."""
        state = self._files.get(inode)
        # The kernel may send the forget of an inode before the release of its last file.
        if state is not None and not mode.direct_io:
            state.readers -= 1

    async def _drop_kernel_view(self, inode: int) -> None:
        try:
            await asyncio.to_thread(self._invalidate, inode)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the kernel holds nothing of this inode
                log.warning("cannot invalidate the kernel's cache of inode %d: %s", inode, exc)

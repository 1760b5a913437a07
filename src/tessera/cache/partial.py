"""Early delivery: a block in flight can be read as soon as the bytes a reader needs have arrived.

A fill lands a block (memory, disk, the block's future) only once all of it has arrived; a reader
that needs 64 KiB of it would otherwise wait for the whole block. Here a block in flight is a buffer
that the fill's streams write into at their offsets (one GET from the block's start, or two GETs
that each cover a part of it), with readers waiting for a byte range of it.

Only the bytes of a response for the version's ETag are ever written (``If-Match``, checked by the
origin layer), so every range a reader gets is the version's bytes, even if the fill fails later.
A retried GET writes the same bytes again at the same offsets, which changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator

#: Chunk size of a short GET (a random read's block or part of one): a reader waiting for part of a
#: block is served within this many bytes of its range arriving.
STREAM_CHUNK = 64 * 1024


def stream_chunk(length: int, block_size: int) -> int:
    """Chunk size for a GET of ``length`` bytes: small for the one or two blocks of a random read,
    whole blocks for a long sequential run (whose readers want whole blocks anyway), where a
    chunk's fixed cost on the event loop would add up."""
    return STREAM_CHUNK if length <= 2 * block_size else block_size


class PartialBlock:
    """One block in flight: the bytes received so far (as merged intervals) and the readers waiting."""

    __slots__ = ("_data", "_have", "_waiters", "length")

    def __init__(self, length: int) -> None:
        self.length = length
        self._data: bytearray | None = None  # allocated by the first write, not by a waiting reader
        self._have: list[tuple[int, int]] = []  # sorted, disjoint, not touching
        self._waiters: list[tuple[int, int, asyncio.Future[bytes]]] = []

    @property
    def complete(self) -> bool:
        return self._have == [(0, self.length)]

    def covers(self, lo: int, hi: int) -> bool:
        return any(start <= lo and hi <= end for start, end in self._have)

    def write(self, at: int, data: bytes | memoryview) -> None:
        """Bytes ``data`` of the block at offset ``at`` have arrived; wake the readers they complete.

        The write that completes the block wakes nobody: the fill lands the block at once, and
        ``PartialBlocks.landed`` hands each reader its range of the landed ``bytes`` (a whole-block
        reader gets that very object, not a copy).
        """
        if not data:
            return
        if self._data is None:
            self._data = bytearray(self.length)
        end = at + len(data)
        self._data[at:end] = data
        have = self._have
        if len(have) == 1 and have[0][0] <= at <= have[0][1]:  # the usual case: one stream, in order
            have[0] = (have[0][0], max(end, have[0][1]))
        else:
            merged: list[tuple[int, int]] = []
            for start, stop in have:
                if stop < at or start > end:
                    merged.append((start, stop))
                else:
                    at, end = min(at, start), max(end, stop)
            merged.append((at, end))
            merged.sort()
            self._have = merged
        if self._waiters and not self.complete:  # once complete, ``landed`` serves them from the block
            waiting = []
            for lo, hi, future in self._waiters:
                if future.done():
                    continue
                if self.covers(lo, hi):
                    future.set_result(bytes(memoryview(self._data)[lo:hi]))
                else:
                    waiting.append((lo, hi, future))
            self._waiters = waiting

    def whole(self) -> bytes:
        """The whole block (only once ``complete``)."""
        assert self._data is not None and self.complete
        return bytes(self._data)

    async def read(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` of the block, as soon as they have arrived."""
        if self._data is not None and self.covers(lo, hi):
            return bytes(memoryview(self._data)[lo:hi])
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.append((lo, hi, future))
        return await future

    def close(self, data: bytes | None, error: BaseException | None = None) -> None:
        """The block landed as ``data``, or failed with ``error``: serve or fail the readers left."""
        for lo, hi, future in self._waiters:
            if future.done():
                continue
            if data is not None:
                future.set_result(data[lo:hi])
            else:
                future.set_exception(error or RuntimeError("block fill ended"))
                future.add_done_callback(_consume)
        self._waiters = []


def _consume(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


class PartialBlocks:
    """The blocks in flight that someone reads or writes early, by key (``(vid, index)``)."""

    def __init__(self) -> None:
        self._blocks: dict[Hashable, PartialBlock] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, key: Hashable, length: int) -> PartialBlock:
        """The block's buffer, made empty if nobody has asked for it yet."""
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = PartialBlock(length)
        return block

    def landed(self, key: Hashable, data: bytes) -> None:
        """The block is complete: forget its buffer; any reader still waiting gets its range of ``data``."""
        block = self._blocks.pop(key, None)
        if block is not None:
            block.close(data)

    def failed(self, key: Hashable, error: BaseException) -> None:
        """The fill gave up on the block: forget its buffer; readers still waiting get ``error``."""
        block = self._blocks.pop(key, None)
        if block is not None:
            block.close(None, error)


def block_pieces(position: int, data: bytes, block_size: int) -> Iterator[tuple[int, int, memoryview]]:
    """Cut ``data``, found at byte ``position`` of an object, at block boundaries:
    ``(block index, offset in that block, piece)``."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        index, at = divmod(position + done, block_size)
        piece = view[done : done + block_size - at]
        yield index, at, piece
        done += len(piece)


__all__ = ["STREAM_CHUNK", "PartialBlock", "PartialBlocks", "block_pieces", "stream_chunk"]

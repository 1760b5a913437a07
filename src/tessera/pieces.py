"""Gathering a stream's small chunks into larger pieces.

A request body arrives in pieces of about 64 KiB. Every piece handed on costs a fixed amount of
Python work (a hash update, a round trip into obstore's runtime, a write call), so the write path
gathers them first, with one copy per byte (a list joined once, never a growing buffer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

#: The size the write path gathers a body's chunks to.
PIECE = 1024 * 1024


async def gathered(chunks: AsyncIterator[bytes], size: int = PIECE) -> AsyncIterator[bytes]:
    """The bytes of ``chunks`` in pieces of at least ``size`` bytes (the last one may be shorter).

    A chunk that is already that large when nothing is pending goes on as it is, uncopied.
    """
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in chunks:
        if not chunk:
            continue
        if not pending and len(chunk) >= size:
            yield chunk
            continue
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            pending_size = 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)

"""One page of a listing: the objects under a prefix in key order, optionally rolled up into
sub-prefixes at a delimiter, resumed after an opaque cursor.

A page reads at most ``limit`` entries' worth of the origin's listing, started after the cursor at the
origin itself (``Origin.list(start_after=…)``), so paging through a bucket costs one pass over it in
all, not one per page. Under a delimiter, the keys inside a sub-prefix are skipped: read through while
they are few, and past ``SKIP_READ`` of them by a listing started again after the sub-prefix, so a
prefix holding millions of keys costs one request, not millions of keys read.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from tessera.errors import InvalidPath
from tessera.origins.base import ObjectInfo, Origin

#: Keys inside one sub-prefix read and dropped before the listing is started again after it.
SKIP_READ = 1000
#: Sorts after every character a key can hold: ``p + AFTER_ALL`` comes after every key starting with p.
AFTER_ALL = "\U0010ffff"


@dataclass(slots=True)
class Page:
    """Objects and sub-prefixes (keys relative to the origin) and the cursor of the next page."""

    items: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next: str | None = None


def encode_cursor(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, prefix: str) -> str:
    """The last key or sub-prefix a page ended on; ``InvalidPath`` (400) unless ``cursor`` is one that
    a page of ``prefix`` gave."""
    try:
        last = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        raise InvalidPath("cursor is not one a listing gave") from None
    if not last.startswith(prefix) or last == prefix:
        raise InvalidPath("cursor does not belong to this prefix")
    return last


async def list_page(
    origin: Origin, prefix: str, *, delimiter: str | None, limit: int, cursor: str | None
) -> Page:
    """Up to ``limit`` entries (objects and sub-prefixes together) under ``prefix``, after ``cursor``."""
    page = Page()
    after = decode_cursor(cursor, prefix) if cursor else None
    if after is not None and delimiter and after.endswith(delimiter):
        after += AFTER_ALL  # the page ended on a sub-prefix: resume after every key inside it
    rolling: str | None = None  # the sub-prefix the last entry was, whose keys are being skipped
    while True:
        skipped = 0
        async for info in origin.list(prefix, start_after=after):
            if rolling is not None and info.key.startswith(rolling):
                skipped += 1
                if skipped > SKIP_READ:
                    break  # many keys inside: start a listing after them instead of reading on
                continue
            if len(page.items) + len(page.prefixes) == limit:
                page.next = encode_cursor(rolling if rolling is not None else page.items[-1].key)
                return page
            cut = info.key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                page.items.append(info)
                rolling = None
            else:
                rolling = info.key[: cut + len(delimiter or "")]
                page.prefixes.append(rolling)
                skipped = 0
        else:
            return page
        assert rolling is not None
        after = rolling + AFTER_ALL

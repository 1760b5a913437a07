"""HTTP ``Range`` parsing (RFC 9110 §14): pure functions."""

from __future__ import annotations

import re

_SINGLE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")

#: A ``Range`` header longer than this is ignored (RFC 9110 §14.2 lets a server ignore any ``Range``);
#: a single byte range needs a few dozen characters.
MAX_RANGE_HEADER = 200

#: Larger than any object: a position with more digits is read as "past every end" without ``int()``
#: ever seeing a number of thousands of digits (Python refuses to convert those: a 500 otherwise).
_BEYOND = 10**18
_MAX_DIGITS = len(str(_BEYOND)) - 1


class Unsatisfiable(ValueError):
    """No byte of the requested range exists: answer 416."""


def _position(digits: str) -> int:
    """A byte position as sent by a client, with every value of 19 or more digits taken as ``_BEYOND``."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_DIGITS else _BEYOND


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` a ``Range`` header asks for, or None to send the whole object.

    Only single ranges are served as 206; a header we cannot honour (another unit, several ranges,
    bad syntax, longer than ``MAX_RANGE_HEADER``) is ignored, as the RFC allows, and the whole object
    is sent. Positions of any length keep their meaning: a first byte beyond the object is a 416, a
    last byte beyond it means "to the end".
    """
    if not header or len(header) > MAX_RANGE_HEADER:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _SINGLE.match(spec)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(0, size - suffix), size
    start = _position(first)
    if last and _position(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    end = size if not last else min(size, _position(last) + 1)
    return start, end


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (weak comparison)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(","))

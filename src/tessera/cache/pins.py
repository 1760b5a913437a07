"""Pinned paths: reference data that must stay local, matched by exact key or by prefix."""

from __future__ import annotations

from collections.abc import Iterator


class PinSet:
    """Pins are ``(origin, key)`` for one object or ``(origin, "prefix/")`` for everything below it.

    ``matches`` costs one set lookup per path segment of the key, however many pins there are.
    """

    def __init__(self) -> None:
        self._pins: set[tuple[str, str]] = set()

    def add(self, origin: str, pattern: str) -> None:
        self._pins.add((origin, pattern))

    def __contains__(self, pin: object) -> bool:
        """Whether ``(origin, pattern)`` is itself a pin (not whether some pin matches a key)."""
        return pin in self._pins

    def discard(self, origin: str, pattern: str) -> bool:
        if (origin, pattern) in self._pins:
            self._pins.remove((origin, pattern))
            return True
        return False

    def matches(self, origin: str, key: str) -> bool:
        if not self._pins:
            return False
        if (origin, key) in self._pins or (origin, "") in self._pins:
            return True
        slash = key.find("/")
        while slash != -1:
            if (origin, key[: slash + 1]) in self._pins:
                return True
            slash = key.find("/", slash + 1)
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(sorted(self._pins))

    def __len__(self) -> int:
        return len(self._pins)

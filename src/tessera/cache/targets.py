"""What a path names for purge, pin and warm: one object, every object under a prefix, or both.

One rule for all of them: ``/mount/a/b`` names the object ``a/b`` and everything under ``a/b/``;
``/mount/a/b/`` names only what is under ``a/b/``; ``/mount`` (or ``/mount/``) names the whole mount.
A pin is kept as a *pattern*: the key of one object, or ``prefix/`` (``""``: a whole mount).
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.namespace import Resolved


@dataclass(frozen=True, slots=True)
class Target:
    origin: str
    #: The one object named ("" if none).
    key: str
    #: Everything under it (``""``: the whole origin; None: nothing).
    prefix: str | None

    @classmethod
    def of(cls, resolved: Resolved, path: str) -> Target:
        """What ``path`` (resolved as a prefix) names for purge: the object and what is under it."""
        key = resolved.key
        exact = bool(key) and not path.endswith("/")
        prefix = key if not key or key.endswith("/") else key + "/"
        return cls(resolved.origin.identity, key if exact else "", prefix)

    @classmethod
    def of_pattern(cls, origin: str, pattern: str) -> Target:
        """What a pin pattern names: one object, or every object under a prefix."""
        if not pattern or pattern.endswith("/"):
            return cls(origin, "", pattern)
        return cls(origin, pattern, None)

    @property
    def pattern(self) -> str:
        """The pin pattern for a path: the object's key if it names one, else its prefix."""
        return self.key or (self.prefix or "")

    def matches(self, candidate: str) -> bool:
        return (bool(self.key) and candidate == self.key) or (
            self.prefix is not None and candidate.startswith(self.prefix)
        )

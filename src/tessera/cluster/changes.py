"""What a node tells the others: a change made through it, and the hook that announces it.

The hooks (``StorageManager.put/delete``, the purge operation, the hosting service) call
``Announcer.announce`` once per change. A single node's announcer does nothing; a cluster node's sends
the change to the Redis stream the other nodes read (``cluster.invalidation``), without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tessera.origins import ObjectInfo

#: ``written``/``deleted``: an object (its virtual path) was stored or removed; ``purged``: an object or
#: prefix was dropped from the cache; ``link``: a hosted link's row changed (deleted, or made ready);
#: ``everything``: the sender lost changes (its backlog overflowed while Redis was away), so every node
#: revalidates every object.
Kind = Literal["written", "deleted", "purged", "link", "everything"]
KINDS: tuple[Kind, ...] = ("written", "deleted", "purged", "link", "everything")


@dataclass(frozen=True, slots=True)
class Change:
    kind: Kind
    #: The virtual path (``written``, ``deleted``, ``purged``) or the link (``link``).
    subject: str = ""
    #: The new version (``written``), so the other nodes take it as validated: no HEAD needed.
    info: ObjectInfo | None = None

    @classmethod
    def written(cls, path: str, info: ObjectInfo) -> Change:
        return cls("written", path, info)

    @classmethod
    def deleted(cls, path: str) -> Change:
        return cls("deleted", path)

    @classmethod
    def purged(cls, path: str) -> Change:
        return cls("purged", path)

    @classmethod
    def link(cls, link: str) -> Change:
        return cls("link", link)

    def fields(self, node: str) -> dict[str, str]:
        """The stream entry's fields (``node``: the sender, so it can skip its own entries)."""
        fields = {"node": node, "kind": self.kind, "subject": self.subject}
        if self.info is not None:
            info = self.info
            fields.update(key=info.key, size=str(info.size), etag=info.etag, mtime=repr(info.mtime))
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> tuple[str, Change]:
        """(sender, change) from a stream entry; ``ValueError`` for an entry no node could have sent."""
        text = {name.decode(): value.decode() for name, value in fields.items()}
        kind = text.get("kind", "")
        if kind not in KINDS:
            raise ValueError(f"unknown change kind {kind!r}")
        info = None
        if kind == "written":
            info = ObjectInfo(text["key"], int(text["size"]), text["etag"], float(text["mtime"]))
        return text.get("node", ""), cls(kind, text.get("subject", ""), info)


class Announcer:
    """Where changes are announced. This one (a single node) has nobody to tell."""

    def announce(self, change: Change) -> None:
        """Tell the other nodes about ``change``; never waits and never fails."""


#: The announcer of a node that is not part of a cluster.
SOLO = Announcer()

"""Inode numbers for the FUSE view: one number per name in its directory while the kernel holds it.

The kernel counts the replies that gave it an inode (lookups and readdir entries) and hands the count
back with ``forget`` when it drops the inode; at zero the entry goes. So the table holds what the
kernel's inode cache holds (the kernel bounds that), not every path ever seen. After ``ls`` of huge
directories that is millions of entries, so each is kept small: a slot in a few typed arrays (parent
inode, lookup count, generation, kind) plus its name (the listing's own string when it came from a
readdir) and one slot in its directory's name -> inode dict; a path is rebuilt from the parents when
asked for. An entry that still has children outlives its own forget (its children's paths go through
it); a lookup of it meanwhile gets the same number back.

Numbers are not reused: an inode number is its slot plus the slot's generation in the high bits, and
a freed slot's generation goes up (wrapping only after 2**32 reuses of that slot), so a name looked up
again after a forget gets a new number (an ``open`` or ``release`` racing a ``forget`` never reaches
another file's state).
"""

from __future__ import annotations

import errno
from array import array

import pyfuse3

ROOT_INODE = int(pyfuse3.ROOT_INODE)
_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1


class InodeTable:
    def __init__(self) -> None:
        # Slot 0 is never used (inode 0 is invalid); slot 1 is the root, never forgotten.
        self._parents = array("Q", [0, 0])
        self._counts = array("Q", [0, 0])
        self._generations = array("I", [0, 0])
        self._is_dir = bytearray([0, 1])
        self._names: list[str | None] = [None, ""]
        self._children: dict[int, dict[str, int]] = {}
        self._free = array("I")
        self._used = 1

    def _slot(self, inode: int) -> int:
        """The slot of a live inode number; ENOENT for one that was freed or never given."""
        slot = inode & _SLOT_MASK
        live = slot < len(self._names) and self._names[slot] is not None
        if not live or self._generations[slot] != inode >> _SLOT_BITS:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return slot

    def give(self, parent: int, name: str, is_dir: bool) -> int:
        """The inode of ``name`` in directory ``parent`` (a new one if the kernel holds none), counted as
        given to the kernel once (undo with ``forget(inode, 1)`` if the reply is not sent)."""
        children = self._children.get(parent)
        if children is None:
            self._slot(parent)
            children = self._children[parent] = {}
        inode = children.get(name)
        if inode is None:
            inode = children[name] = self._new(parent, name)
        slot = inode & _SLOT_MASK
        self._counts[slot] += 1
        self._is_dir[slot] = is_dir
        return inode

    def _new(self, parent: int, name: str) -> int:
        self._used += 1
        if self._free:
            slot = self._free.pop()
            self._parents[slot] = parent
            self._counts[slot] = 0
            self._names[slot] = name
        else:
            slot = len(self._names)
            self._parents.append(parent)
            self._counts.append(0)
            self._generations.append(0)
            self._is_dir.append(0)
            self._names.append(name)
        return slot | self._generations[slot] << _SLOT_BITS

    def forget(self, inode: int, count: int) -> bool:
        """The kernel dropped ``count`` of its references; returns True when it holds none any more."""
        if inode == ROOT_INODE:
            return False
        try:
            slot = self._slot(inode)
        except pyfuse3.FUSEError:
            return True
        remaining = self._counts[slot] - count
        if remaining > 0:
            self._counts[slot] = remaining
            return False
        self._counts[slot] = 0
        self._release(inode, slot)
        return True

    def _release(self, inode: int, slot: int) -> None:
        """Free a forgotten entry unless children still hang off it; then its parent too, if it waits."""
        while inode != ROOT_INODE and self._counts[slot] == 0 and inode not in self._children:
            parent = self._parents[slot]
            siblings = self._children[parent]
            del siblings[self._names[slot]]  # type: ignore[arg-type]
            self._names[slot] = None
            self._generations[slot] = (self._generations[slot] + 1) & _SLOT_MASK
            self._free.append(slot)
            self._used -= 1
            if siblings:
                return
            del self._children[parent]
            inode, slot = parent, parent & _SLOT_MASK

    def key(self, inode: int) -> str:
        """The key of ``inode`` below the mount (``""`` for the root)."""
        parts = []
        slot = self._slot(inode)
        while slot != ROOT_INODE:
            parts.append(self._names[slot])
            slot = self._parents[slot] & _SLOT_MASK
        return "/".join(reversed(parts))  # type: ignore[arg-type]

    def is_dir(self, inode: int) -> bool:
        try:
            return bool(self._is_dir[self._slot(inode)])
        except pyfuse3.FUSEError:
            return False

    def __len__(self) -> int:
        """Inodes held (the root included)."""
        return self._used

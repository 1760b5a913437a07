"""Inode numbers for the FUSE view: one number per name in its directory while the kernel holds it.

The kernel counts the replies that gave it an inode (lookups and readdir entries) and hands the count
back with ``forget`` when it drops the inode; at zero the entry goes. So the table holds what the
kernel's inode cache holds, not every path ever seen. After a walk of millions of objects that is
millions of entries: the kernel keeps the dentry and inode of every name it was given until memory
pressure. So each entry is kept small (a slot in a few typed arrays: parent inode, lookup count,
generation, flags; its name, the listing's own string when it came from a readdir; one slot in its
directory's name -> inode dict; a path is rebuilt from the parents when asked for), and the table has a
byte budget: past it, the kernel is asked to drop leaf entries not used for the longest time (a clock,
``_trim``) with ``invalidate`` (``pyfuse3.invalidate_entry_async``), and then sends ``forget`` for them
unless something still uses them (an open file, a working directory). Only ``forget`` frees an entry:
one the kernel still holds stays, with its number. A leaf is a file or a directory without entries
below it in the table; the root and directories with children are never dropped.
An entry that still has children outlives its own forget (its children's paths go through it); a
lookup of it meanwhile gets the same number back.

Numbers are not reused: an inode number is its slot plus the slot's generation in the high bits, and
a freed slot's generation goes up (wrapping only after 2**32 reuses of that slot), so a name looked up
again after a forget gets a new number (an ``open`` or ``release`` racing a ``forget`` never reaches
another file's state).
"""

from __future__ import annotations

import errno
import math
import sys
from array import array
from collections.abc import Callable

import pyfuse3

ROOT_INODE = int(pyfuse3.ROOT_INODE)
_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1

#: Estimated bytes of one entry besides its name's text, measured with tracemalloc on CPython 3.11
#: (``tests/test_fuse_inodes.py`` measures again and holds the estimate an upper bound within 12 %):
#: 29 B of array and list slots, the inode number's int object (32 B) and its directory's dict slot,
#: amortised over the growth of arrays and dicts.
ENTRY_BYTES = 106

#: Part of ``fs.listing_cache_size`` the inode table of a mount may take (the listings kept get the rest).
INODE_SHARE = 0.5

_DIR = 1
#: Given or used since the clock hand last passed: spared by the hand once.
_USED = 2
#: The kernel was asked to drop this entry; its ``forget`` has not come yet.
_LEAVING = 4
#: Slots the hand never stops at: 0 (no inode) and the root.
_FIRST_SLOT = 2


def _no_invalidation(parent: int, name: str) -> None:
    raise AssertionError("an unbounded inode table never invalidates")


class InodeTable:
    def __init__(
        self, max_bytes: float = math.inf, invalidate: Callable[[int, str], None] = _no_invalidation
    ) -> None:
        """``invalidate(parent, name)`` asks the kernel to drop an entry when the table holds more than
        ``max_bytes`` (estimated: ``ENTRY_BYTES`` plus the name) besides the entries already asked."""
        self.max_bytes = max_bytes
        self._invalidate = invalidate
        # Slot 0 is never used (inode 0 is invalid); slot 1 is the root, never forgotten.
        self._parents = array("Q", [0, 0])
        self._counts = array("Q", [0, 0])
        self._generations = array("I", [0, 0])
        self._flags = bytearray([0, _DIR])
        self._names: list[str | None] = [None, ""]
        self._children: dict[int, dict[str, int]] = {}
        self._free = array("I")
        self._used = 1
        #: The slot the clock hand looked at last.
        self._hand = _FIRST_SLOT - 1
        #: Estimated bytes of the entries held, and of those the kernel was asked to drop.
        self.bytes = 0
        self._leaving = 0

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
        if self._flags[slot] & _LEAVING:  # given again before its forget came: the kernel holds it
            self._leaving -= ENTRY_BYTES + sys.getsizeof(name)
        self._flags[slot] = _DIR | _USED if is_dir else _USED
        if self.bytes - self._leaving > self.max_bytes:
            self._trim()
        return inode

    def _new(self, parent: int, name: str) -> int:
        self._used += 1
        self.bytes += ENTRY_BYTES + sys.getsizeof(name)
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
            self._flags.append(0)
            self._names.append(name)
        return slot | self._generations[slot] << _SLOT_BITS

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` more (or fewer) in the budget: state kept elsewhere for as long as an inode
        lives (see ``KernelVersions``). Drops are asked for at once if that goes over the budget: a
        walk's last ``stat`` calls charge after its last ``give``, and nothing else would trim them."""
        self.bytes += nbytes
        if nbytes > 0 and self.bytes - self._leaving > self.max_bytes:
            self._trim()

    def touch(self, inode: int) -> None:
        """``inode`` was used (an open, a getattr): the clock hand spares it once more."""
        slot = inode & _SLOT_MASK
        if slot < len(self._flags):
            self._flags[slot] |= _USED

    def _trim(self) -> None:
        """Ask the kernel to drop leaves until the rest fit the budget, least recently used first.

        A clock: the hand goes round the slots; an entry used since the hand last passed is spared
        once (its mark cleared), the root, directories with entries below them and entries already
        asked for are passed over. Two turns without a leaf to drop end the search.
        """
        flags, names, end = self._flags, self._names, len(self._names)
        slot, steps = self._hand, 0
        while self.bytes - self._leaving > self.max_bytes and steps <= 2 * end:
            steps += 1
            slot = slot + 1 if slot + 1 < end else _FIRST_SLOT
            mark, name = flags[slot], names[slot]
            if name is None or mark & _LEAVING:
                continue
            if mark & _USED:
                flags[slot] = mark & ~_USED
                continue
            if mark & _DIR and slot | self._generations[slot] << _SLOT_BITS in self._children:
                continue
            flags[slot] = mark | _LEAVING
            self._leaving += ENTRY_BYTES + sys.getsizeof(name)
            self._invalidate(self._parents[slot], name)
        self._hand = slot

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
            name = self._names[slot]
            assert name is not None
            del siblings[name]
            size = ENTRY_BYTES + sys.getsizeof(name)
            self.bytes -= size
            if self._flags[slot] & _LEAVING:
                self._leaving -= size
            self._flags[slot] = 0
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
            return bool(self._flags[self._slot(inode)] & _DIR)
        except pyfuse3.FUSEError:
            return False

    def __len__(self) -> int:
        """Inodes held (the root included)."""
        return self._used

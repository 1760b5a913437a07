"""Inode numbers for the FUSE view: one number per path for as long as the kernel holds the inode.

The kernel counts the replies that gave it an inode (lookups and readdir entries) and hands the count
back with ``forget`` when it drops the inode; at zero the entry goes. So the table holds what the
kernel's inode cache holds (the kernel bounds that), not every path ever seen. Numbers are never
reused: a path looked up again after a forget gets a new one.
"""

from __future__ import annotations

import errno

import pyfuse3

ROOT_INODE = int(pyfuse3.ROOT_INODE)


class InodeTable:
    def __init__(self) -> None:
        self._keys: dict[int, str] = {ROOT_INODE: ""}
        self._inodes: dict[str, int] = {"": ROOT_INODE}
        self._dirs: set[int] = {ROOT_INODE}
        #: Replies that gave the kernel each inode, less those it forgot (the root is never forgotten).
        self._lookups: dict[int, int] = {}
        self._next = ROOT_INODE + 1

    def inode(self, key: str, is_dir: bool) -> int:
        """The inode of ``key`` (a new one if the kernel holds none); count it with ``looked_up``."""
        inode = self._inodes.get(key)
        if inode is None:
            inode = self._next
            self._next += 1
            self._inodes[key] = inode
            self._keys[inode] = key
            self._lookups[inode] = 0
        if is_dir:
            self._dirs.add(inode)
        else:
            self._dirs.discard(inode)
        return inode

    def looked_up(self, inode: int) -> int:
        """Count one reply that gives ``inode`` to the kernel; returns ``inode``."""
        if inode != ROOT_INODE:
            self._lookups[inode] += 1
        return inode

    def forget(self, inode: int, count: int) -> bool:
        """The kernel dropped ``count`` of its references; returns True when it holds none any more."""
        remaining = self._lookups.get(inode, 0) - count
        if inode == ROOT_INODE or remaining > 0:
            if inode in self._lookups:
                self._lookups[inode] = remaining
            return False
        self._lookups.pop(inode, None)
        self._dirs.discard(inode)
        key = self._keys.pop(inode, None)
        if key is not None and self._inodes.get(key) == inode:
            del self._inodes[key]
        return True

    def key(self, inode: int) -> str:
        try:
            return self._keys[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def is_dir(self, inode: int) -> bool:
        return inode in self._dirs

    def __len__(self) -> int:
        return len(self._keys)

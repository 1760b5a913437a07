"""Inode numbers for the FUSE view: a stable number per path for the life of the mount.

Inodes are never reused and never forgotten: a mount that has seen N distinct paths holds N small
entries (about 200 bytes each), which keeps ``forget`` bookkeeping out of the read path.
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
        self._next = ROOT_INODE + 1

    def inode(self, key: str, is_dir: bool) -> int:
        inode = self._inodes.get(key)
        if inode is None:
            inode = self._next
            self._next += 1
            self._inodes[key] = inode
            self._keys[inode] = key
        if is_dir:
            self._dirs.add(inode)
        else:
            self._dirs.discard(inode)
        return inode

    def key(self, inode: int) -> str:
        try:
            return self._keys[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def is_dir(self, inode: int) -> bool:
        return inode in self._dirs

    def __len__(self) -> int:
        return len(self._keys)

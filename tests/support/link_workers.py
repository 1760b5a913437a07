"""Process entry points for the link tests and bench: each runs in a spawned process of its own."""

from __future__ import annotations

import os
import time

from tessera.hosting.allocator import LinkAllocator
from tessera.hosting.linkmap import LinkMap
from tessera.hosting.permutation import LinkPermutation


def allocate(
    url: str, holder: str, count: int, block_size: int, reopen_every: int, start_at: float
) -> list[tuple[int, str]]:
    """Open the link map (migrating it, making the key if first), wait for ``start_at`` so every process
    contends at once, and allocate ``count`` links, closing the allocator (releasing its block) and making
    a new one every ``reopen_every`` links."""
    linkmap = LinkMap.open(url)
    try:
        permutation = LinkPermutation(linkmap.link_key(lambda: os.urandom(32)), 8)
        time.sleep(max(0.0, start_at - time.time()))
        made: list[tuple[int, str]] = []
        allocator = LinkAllocator(linkmap, permutation, holder, block_size)
        for index in range(count):
            if index and index % reopen_every == 0:
                allocator.close()
                allocator = LinkAllocator(linkmap, permutation, f"{holder}.{index}", block_size)
            made.append(allocator.allocate())
        allocator.close()
        return made
    finally:
        linkmap.close()


def open_and_read_key(url: str, start_at: float) -> str:
    """Open (so migrate) a fresh link map at ``start_at`` together with other processes; its key."""
    time.sleep(max(0.0, start_at - time.time()))
    linkmap = LinkMap.open(url)
    try:
        return linkmap.link_key(lambda: os.urandom(32)).hex()
    finally:
        linkmap.close()


def allocate_and_die(url: str, count: int, block_size: int) -> None:
    """Allocate ``count`` links, print their numbers, and die without releasing the block (a crash)."""
    linkmap = LinkMap.open(url)
    permutation = LinkPermutation(linkmap.link_key(lambda: os.urandom(32)), 8)
    allocator = LinkAllocator(linkmap, permutation, f"doomed-{os.getpid()}", block_size)
    print(" ".join(str(allocator.allocate()[0]) for _ in range(count)), flush=True)
    os._exit(0)

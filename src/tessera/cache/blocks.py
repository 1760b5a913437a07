"""Block arithmetic: pure functions, no I/O."""

from __future__ import annotations


def block_count(size: int, block_size: int) -> int:
    return (size + block_size - 1) // block_size


def block_bounds(index: int, block_size: int, size: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of block ``index`` in an object of ``size`` bytes."""
    start = index * block_size
    return start, min(size, start + block_size)


def block_span(start: int, end: int, block_size: int) -> range:
    """Indices of the blocks that hold bytes ``[start, end)`` (``end > start``)."""
    return range(start // block_size, (end - 1) // block_size + 1)


def contiguous_runs(indices: list[int], max_len: int) -> list[tuple[int, int]]:
    """Group sorted block indices into inclusive runs of consecutive blocks, at most ``max_len`` long."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1 and index - runs[-1][0] < max_len:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def byte_ranges(indexes: list[int], block_size: int, size: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of the runs of blocks ``indexes`` (sorted) of an object of ``size``."""
    return [
        (first * block_size, min(size, (last + 1) * block_size))
        for first, last in contiguous_runs(indexes, max(1, len(indexes)))
    ]

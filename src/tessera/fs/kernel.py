"""How large the kernel's FUSE reads of a mount may be, and making them that large.

A buffered read of a FUSE file reaches the daemon as readahead requests. Each request is at most
``max_pages`` pages: libfuse 3 asks for 256 (its ``FUSE_MAX_MAX_PAGES``, i.e. 1 MiB with 4 KiB pages)
and the kernel grants at most ``/proc/sys/fs/fuse/max_pages_limit`` (256 by default). The ``max_read``
mount option cannot raise it (it only lowers the limit, and pyfuse3's init handler does not set the
matching ``conn->max_read``, so libfuse refuses a mount that passes it). What keeps reads at 128 KiB
is the readahead window: the kernel offers ``max_readahead`` = its default 128 KiB in ``FUSE_INIT``
and takes the smaller of that and the daemon's answer, so no daemon can ask for more there. The window
is a property of the mount's backing device, ``/sys/class/bdi/MAJOR:MINOR/read_ahead_kb``, which root
may raise once the ``FUSE_INIT`` reply is sent; the kernel then sends reads of up to ``max_pages``, several
at a time for a window larger than that.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: libfuse 3's request size limit in pages (``FUSE_MAX_MAX_PAGES``), the most it asks the kernel for.
LIBFUSE_MAX_PAGES = 256
PAGE_SIZE = 4096


def max_request_bytes(limit_file: Path = Path("/proc/sys/fs/fuse/max_pages_limit")) -> int:
    """The largest FUSE read request this kernel and libfuse 3 allow."""
    try:
        pages = min(LIBFUSE_MAX_PAGES, int(limit_file.read_text()))
    except (OSError, ValueError):
        pages = 32  # kernels before 4.20 have no max_pages: 128 KiB
    return pages * PAGE_SIZE


def mount_device(mountpoint: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """``MAJOR:MINOR`` of the filesystem mounted at ``mountpoint`` (the last one, if stacked).

    Read from ``mountinfo`` rather than ``stat``: a ``stat`` of our own mount point would be a FUSE
    request to this very process.
    """
    found = None
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == str(mountpoint):
            found = fields[2]
    return found


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def set_readahead(mountpoint: Path, nbytes: int, sysfs: Path = Path("/sys/class/bdi")) -> int | None:
    """Set the kernel readahead window of the mount at ``mountpoint``; returns it in bytes as the kernel
    now has it, or None where it cannot be set (not root, no such device), leaving the kernel default."""
    device = mount_device(mountpoint)
    if device is None:
        return None
    knob = sysfs / device / "read_ahead_kb"
    try:
        knob.write_text(str(nbytes // 1024))
        return int(knob.read_text()) * 1024
    except (OSError, ValueError) as exc:
        log.info("kernel readahead of %s stays at its default (%s)", mountpoint, exc)
        return None


__all__ = ["max_request_bytes", "mount_device", "set_readahead"]

"""Which node nginx's ``hash $key consistent`` picks for a key: the same ring, computed in Python.

nginx (``ngx_http_upstream_hash_module``, compatible with Cache::Memcached::Fast) puts 160 points per
server on a ring of CRC32 values: the points of ``server HOST:PORT`` are ``crc32(HOST \\0 PORT PREV)``
chained from ``PREV = 0`` (a ``unix:PATH`` server is ``PATH`` with no port), and a key goes to the
first point at or after ``crc32(key)``, wrapping around. ``tessera serve --workers`` uses it to say
which shard is an object's home (and the tests check it against what nginx does).
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Collection, Sequence

POINTS_PER_SERVER = 160


def _host_port(server: str) -> tuple[bytes, bytes]:
    if server.lower().startswith("unix:"):
        return server[5:].encode(), b""
    host, sep, port = server.rpartition(":")
    if sep and port.isdigit():
        return host.encode(), port.encode()
    return server.encode(), b""


class Ring:
    """The consistent-hash ring of ``servers`` (as written in nginx's ``server`` lines), all up."""

    def __init__(self, servers: Sequence[str]) -> None:
        if not servers:
            raise ValueError("a ring needs at least one server")
        points: dict[int, int] = {}
        for index, server in enumerate(servers):
            host, port = _host_port(server)
            base = host + b"\0" + port
            previous = 0
            for _ in range(POINTS_PER_SERVER):
                point = zlib.crc32(base + struct.pack("<I", previous))
                points.setdefault(point, index)  # nginx keeps the first of equal points
                previous = point
        self._hashes = sorted(points)
        self._owners = [points[h] for h in self._hashes]

    def node(self, key: str, down: Collection[int] = ()) -> int:
        """The index (in ``servers``) of the node that ``key`` goes to; with the nodes ``down`` out, its
        next home: nginx walks on along the ring to the first point of a node that is up."""
        at = bisect.bisect_left(self._hashes, zlib.crc32(key.encode()))
        if len(set(down) & set(self._owners)) == len(set(self._owners)):
            raise ValueError("every node is down")
        while (owner := self._owners[at % len(self._hashes)]) in down:
            at += 1
        return owner

"""A TCP proxy that cuts connections: after every ``cut_every`` bytes sent upstream (counted over all its
connections) it forwards up to that byte and then closes the connection it came on, as a bad link
would. It counts the bytes clients sent, for the "bytes sent ÷ file size" figure of resumable uploads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

CHUNK = 256 * 1024


class CuttingProxy:
    """``127.0.0.1:port`` → ``upstream_port``; ``cut_every=None``: never cuts."""

    def __init__(self, upstream_port: int, cut_every: int | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.cut_every = cut_every
        self.sent = 0  # bytes clients sent upstream
        self.cuts = 0
        #: While set, new connections are closed at once and open ones at their next bytes (an
        #: upstream that is down).
        self.refusing = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _allowance(self, wanted: int) -> tuple[int, bool]:
        """How many of ``wanted`` bytes may go upstream, and whether the connection is cut after them."""
        with self._lock:
            if self.cut_every is None:
                self.sent += wanted
                return wanted, False
            until_cut = self.cut_every * (self.cuts + 1) - self.sent
            allowed = min(wanted, until_cut)
            self.sent += allowed
            cut = allowed == until_cut
            if cut:
                self.cuts += 1
            return allowed, cut

    def _pump(self, source: socket.socket, target: socket.socket, upstream: bool) -> None:
        try:
            while (data := source.recv(CHUNK)) and not self.refusing:
                cut = False
                if upstream:
                    allowed, cut = self._allowance(len(data))
                    data = data[:allowed]
                target.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

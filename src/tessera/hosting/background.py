"""Derivatives the job queue makes, rendered in worker processes of low CPU priority.

Uploads and views are answered by the server's event loop and its decode threads; the eager formats
beyond JPEG (WebP costs about five times what the JPEG widths do) are made afterwards by the
``hosting.derive`` job. Rendering those in threads of the server would take the CPU from requests
under load; in processes at ``nice`` 10 the kernel gives them only what requests leave, so under a
burst the job backlog grows (it is durable, and a view of a derivative not made yet renders it at
once) while views and uploads keep their latency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from tessera.hosting import derivatives
from tessera.hosting.model import Format, Limits
from tessera.hosting.probe import probe

#: How much lower the workers' CPU priority is (CFS gives a nice-10 task about a tenth of the share of
#: a nice-0 one that wants the same core).
NICENESS = 10


def _lower_priority() -> None:
    os.nice(NICENESS)


def render_upload(
    data: bytes,
    limits: Limits,
    widths: list[int],
    formats: list[Format],
    qualities: Mapping[Format, int],
    keep_copyright: bool,
) -> list[derivatives.Rendition]:
    """Check and decode an upload once, and render ``formats`` at ``widths`` (in a worker process)."""
    return derivatives.decode_and_render(
        data, probe(data, limits), widths, formats, qualities, keep_copyright
    )


class BackgroundRenderer:
    """A pool of low-priority worker processes, started on first use (spawned: a fork of the threaded
    server, libvips included, is not safe) and started again if a worker dies."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_lower_priority)
        return self._pool

    async def render(
        self,
        data: bytes,
        limits: Limits,
        widths: list[int],
        formats: list[Format],
        qualities: Mapping[Format, int],
        keep_copyright: bool,
    ) -> list[derivatives.Rendition]:
        args = (data, limits, widths, formats, dict(qualities), keep_copyright)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), render_upload, *args)
        except BrokenProcessPool:  # a worker died (the OOM killer, a crash in a decoder): once more
            self.close()
            return await loop.run_in_executor(self._executor(), render_upload, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

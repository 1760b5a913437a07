"""Running a mount: the FUSE session and the cache engine on one asyncio loop, clean exit on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import pyfuse3
import pyfuse3.asyncio
from prometheus_client import start_http_server

from tessera.cache import CacheEngine
from tessera.config import MountSettings, Settings
from tessera.fs.kernel import max_request_bytes, set_readahead
from tessera.fs.operations import TesseraFS

log = logging.getLogger(__name__)

#: The mount name used when SOURCE is an origin URL or a folder rather than a configured mount.
SOURCE_MOUNT = "source"
#: The kernel's readahead window of a mount, in largest FUSE requests: a few requests in flight at
#: once, so a sequential reader does not wait for one round trip per request (bench/fuse flood).
KERNEL_READAHEAD_REQUESTS = 4


def mount_for_source(settings: Settings, source: str) -> str:
    """Resolve SOURCE (a configured mount name, ``s3://…``, ``http(s)://…``, ``file://…`` or a folder)."""
    if source in settings.mounts:
        return source
    if "://" in source:
        origin = source
    else:
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"{source} is neither a configured mount, an origin URL nor a folder")
        origin = f"file://{folder}"
    settings.mounts = {SOURCE_MOUNT: MountSettings(origin=origin)}
    return SOURCE_MOUNT


async def _serve(settings: Settings, mount: str, mountpoint: Path, options: set[str]) -> None:
    engine = CacheEngine(settings)
    exporter = _serve_metrics(engine, settings)
    try:
        await engine.start()
    except BaseException:
        _stop(exporter)
        raise
    fs = TesseraFS(engine, mount, settings, on_init=lambda: _widen_reads(mountpoint))
    fuse_options = set(pyfuse3.default_options) | {"fsname=tessera", "subtype=tessera", "ro"} | options
    try:
        pyfuse3.init(fs, str(mountpoint), fuse_options)
    except BaseException:
        await engine.close()
        _stop(exporter)
        raise
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, pyfuse3.terminate)
    log.info("mounted %s at %s", mount, mountpoint)
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=256)
    finally:
        # After `fusermount3 -u` the kernel side is gone already; unmounting again is harmless.
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)
        await engine.close()
        _stop(exporter)
        log.info("unmounted %s (%d reads served, largest %d bytes)", mountpoint, fs.reads, fs.largest_read)


def _widen_reads(mountpoint: Path) -> None:
    """Let the kernel send reads as large as FUSE allows, several at once (see ``fs/kernel.py``)."""
    request = max_request_bytes()
    window = set_readahead(mountpoint, KERNEL_READAHEAD_REQUESTS * request)
    log.info("kernel reads: up to %d bytes a request, readahead window %s", request, window or "default")


def _serve_metrics(engine: CacheEngine, settings: Settings) -> WSGIServer | None:
    """``/metrics`` of the mount's engine on ``server.host:fs.metrics_port`` (a thread), if configured.

    A mount is its own process with no HTTP server, so without this its figures are not seen.
    """
    port = settings.fs.metrics_port
    if port is None:
        return None
    try:
        server, _thread = start_http_server(port, settings.server.host, engine.metrics.registry)
    except OSError as exc:
        raise RuntimeError(f"cannot serve metrics on {settings.server.host}:{port}: {exc}") from None
    return server


def _stop(exporter: WSGIServer | None) -> None:
    if exporter is not None:
        exporter.shutdown()
        exporter.server_close()


def run_mount(settings: Settings, mount: str, mountpoint: Path, options: set[str]) -> None:
    """Mount in the foreground until SIGINT/SIGTERM or an external unmount."""
    pyfuse3.asyncio.enable()
    asyncio.run(_serve(settings, mount, mountpoint, options))


def spawn_daemon(argv: list[str], mountpoint: Path, log_file: Path, timeout: float = 60.0) -> int:
    """Start the same mount command in the background; return once it is mounted (or failed)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return child.pid
        if child.poll() is not None:
            raise RuntimeError(f"mount failed (exit {child.returncode}); see {log_file}")
        time.sleep(0.05)
    child.terminate()
    raise RuntimeError(f"mount did not come up within {timeout:.0f}s; see {log_file}")


__all__ = ["SOURCE_MOUNT", "mount_for_source", "run_mount", "spawn_daemon"]

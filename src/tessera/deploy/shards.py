"""``tessera serve --workers N``: N shard processes behind an nginx front, on one machine.

Each shard is a normal ``tessera serve`` (``--shard K --workers N``) that owns ``cache.dir/shard-K``
with its share (1/N) of the node's cache budgets, and listens on a Unix socket in that folder
(``http.sock``): no port to pick or collide with, nothing reachable from the network but the front,
and the address is known from the config alone, so a shard started by hand or by systemd and the
front rendered by ``tessera front-config --shards N`` find each other. nginx routes every request by
a consistent hash of its object (``deploy.nginx``), so one object is cached in one shard only.

:class:`Supervisor` starts nginx and the shards, restarts any that exits (with backoff), and stops
them all on SIGTERM or SIGINT. Each child runs in a process group of its own (the supervisor kills
the whole group, so no nginx worker outlives its master) and gets SIGTERM if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from tessera.config import CacheSettings, ConfigError, Settings, format_size

log = logging.getLogger("tessera.shards")

SOCKET_NAME = "http.sock"
#: ``sun_path`` holds 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107
NGINX_MISSING = (
    "nginx is not installed (or not on PATH), and `tessera serve --workers` runs its shards behind "
    "it: install it (Debian/Ubuntu: apt-get install nginx), or run one worker (--workers 1)"
)
_PR_SET_PDEATHSIG = 1


def worker_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` (the cores this process may run on)."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--workers must be a positive number or auto, not {text!r}")
    return int(text)


def shard_dir(cache_dir: Path, shard: int) -> Path:
    return cache_dir / f"shard-{shard}"


def shard_socket(cache_dir: Path, shard: int) -> Path:
    """Where shard ``shard`` listens; a ``ValueError`` if the path is too long for a Unix socket."""
    path = shard_dir(cache_dir.resolve(), shard) / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"the shard socket {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path "
            "may have: choose a shorter cache.dir"
        )
    return path


def shard_nodes(cache_dir: Path, workers: int) -> list[str]:
    """The shards as nginx ``server`` addresses, in shard order."""
    return [f"unix:{shard_socket(cache_dir, k)}" for k in range(workers)]


def shard_settings(settings: Settings, shard: int, workers: int) -> Settings:
    """The settings of shard ``shard`` of ``workers``: its own folders and its share of every budget
    of the node (disk, memory, pins, second tier, metadata, decoded JPEG 2000 tiles)."""
    if not 0 <= shard < workers:
        raise ValueError(f"--shard must be between 0 and {workers - 1} with --workers {workers}")
    cache = settings.cache
    updates: dict[str, object] = {
        "dir": shard_dir(cache.dir, shard),
        "disk_size": cache.disk_size // workers,
        "memory_size": cache.memory_size // workers,
        "metadata_size": cache.metadata_size // workers,
    }
    if cache.pin_size is not None:
        updates["pin_size"] = cache.pin_size // workers
    if cache.second_dir is not None:
        updates["second_dir"] = shard_dir(cache.second_dir, shard)
        updates["second_size"] = cache.second_size // workers
    try:
        shard_cache = CacheSettings.model_validate({**cache.model_dump(), **updates})
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(
            f"cache.disk_size {format_size(cache.disk_size)} split over {workers} shards: {problems}"
        ) from None
    images = settings.images.model_copy(update={"decoded_cache": settings.images.decoded_cache // workers})
    storage = settings.storage
    if storage.uploads_dir is not None:
        storage = storage.model_copy(update={"uploads_dir": shard_dir(storage.uploads_dir, shard)})
    return settings.model_copy(update={"cache": shard_cache, "images": images, "storage": storage})


def find_nginx() -> str:
    """nginx on PATH, or a ``FileNotFoundError`` that says how to install it."""
    found = shutil.which("nginx")
    if found is None:
        raise FileNotFoundError(NGINX_MISSING)
    return found


def lock_node(cache_dir: Path) -> int:
    """Take ``cache.dir/lock`` as the cache engine does, so that commands that would open the cache
    directory themselves (``tessera warm``…) ask the running server instead, and a second
    ``tessera serve`` on the same directory stops at once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ValueError(
            f"cache directory {cache_dir} is in use by another process (pid {owner or '?'})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _child_setup() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, whatever killed it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process: a shard or nginx."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    restarts: int = 0
    #: Runs before each start (nginx: remove what a killed master left).
    before_start: Callable[[], None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts ``children``, restarts the ones that exit, stops them all on SIGTERM or SIGINT.

    A child that exits is restarted after ``backoff`` seconds, doubled after each exit that came
    less than ``stable`` seconds after its start, up to ``max_backoff``.
    """

    def __init__(
        self,
        children: list[Child],
        *,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.children = children
        self.backoff, self.max_backoff, self.stable = backoff, max_backoff, stable
        self.stop_timeout = stop_timeout
        self._stopping = False

    def run(self) -> None:
        """Until SIGTERM or SIGINT; then every child's process group is stopped."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for child in self.children:
                self._start(child)
            while not self._stopping:
                now = time.monotonic()
                for child in self.children:
                    if child.process is not None and child.process.poll() is not None:
                        self._exited(child, now)
                    if child.process is None and now >= child.next_start and not self._stopping:
                        self._start(child)
                time.sleep(0.1)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, _frame: object) -> None:
        log.info("%s: stopping every shard and nginx", signal.Signals(signum).name)
        self._stopping = True

    def _start(self, child: Child) -> None:
        if child.before_start is not None:
            child.before_start()
        child.process = subprocess.Popen(child.command, process_group=0, preexec_fn=_child_setup)
        child.started = time.monotonic()
        log.info("%s: started, pid %d", child.name, child.process.pid)

    def _exited(self, child: Child, now: float) -> None:
        assert child.process is not None
        code = child.process.returncode
        _kill_group(child.process.pid, signal.SIGKILL)  # what it left behind (nginx workers)
        child.failures = 0 if now - child.started >= self.stable else child.failures + 1
        delay = min(self.max_backoff, self.backoff * 2 ** max(0, child.failures - 1))
        child.next_start = now + delay
        child.process = None
        child.restarts += 1
        log.warning("%s exited (%s); restarting in %.1f s", child.name, _describe_exit(code), delay)

    def _stop_all(self) -> None:
        running = [c.process for c in self.children if c.process is not None]
        for process in running:
            _kill_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0f s: killed", process.pid, self.stop_timeout)
        for process in running:  # the leader's children too (nginx workers), and any straggler
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
        for child in self.children:
            child.process = None


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def shard_command(config: Path | None, shard: int, workers: int, log_level: str) -> list[str]:
    """The command line of one shard (what the systemd unit ``tessera-shard@.service`` runs too)."""
    command = [sys.executable, "-m", "tessera.cli", "serve", "--shard", str(shard), "--workers", str(workers)]
    if config is not None:
        command += ["--config", str(config.resolve())]
    return [*command, "--log-level", log_level]


def front_conf(settings: Settings, workers: int, *, conf_file: Path) -> str:
    """The nginx.conf of the front of ``workers`` shards on ``server.host:server.port``."""
    from tessera.deploy.nginx import render_nginx_conf

    root = settings.cache.dir.resolve()
    host = settings.server.host
    listen = f"[{host}]:{settings.server.port}" if ":" in host else f"{host}:{settings.server.port}"
    return render_nginx_conf(
        nodes=shard_nodes(root, workers),
        listen=listen,
        cache_dir=root / "front",
        prefix=root / "front-run",
        fresh=settings.cache.metadata_ttl,
        fail_timeout=settings.cluster.fail_timeout,
        access_log=settings.server.access_log,
        # One nginx worker proxies far more requests than four Python shards answer; more of them only
        # take turns on the cores the shards need.
        worker_processes=-(-workers // 4),
        user=_owner(root) if os.geteuid() == 0 else None,
        # derivative_cache = false keeps rendered responses out of every cache, nginx's too.
        http_cache=settings.images.derivative_cache,
        max_body=max(settings.storage.max_upload_size, settings.hosting.max_upload_size),
        hosting_mount=settings.hosting.mount,
        conf_file=conf_file,
    )


def _owner(path: Path) -> str:
    """nginx started as root runs its workers as the owner of the cache directory (they must reach
    the shards' sockets)."""
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name


def run_node(settings: Settings, config: Path | None, workers: int, log_level: str) -> None:
    """``tessera serve --workers N``: until SIGTERM or SIGINT."""
    nginx = find_nginx()
    for k in range(workers):  # a share too small, a socket path too long: said now, not in a restart loop
        shard_settings(settings, k, workers)
        shard_socket(settings.cache.dir, k)
    root = settings.cache.dir.resolve()
    lock = lock_node(root)
    try:
        run_dir = root / "front-run"
        for directory in (root / "front", run_dir, *(shard_dir(root, k) for k in range(workers))):
            directory.mkdir(parents=True, exist_ok=True)
        conf = run_dir / "nginx.conf"
        conf.write_text(front_conf(settings, workers, conf_file=conf))
        nginx_command = [nginx, "-p", str(run_dir), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
        checked = subprocess.run([*nginx_command[:-2], "-t", "-q"], capture_output=True, text=True)
        if checked.returncode != 0:
            raise ValueError(f"nginx refused the front's configuration {conf}: {checked.stderr.strip()}")
        children = [Child(f"shard {k}", shard_command(config, k, workers, log_level)) for k in range(workers)]
        children.append(Child("nginx", nginx_command, before_start=lambda: _clear_pid(run_dir)))
        log.info(
            "serving on http://%s:%d with %d shards under %s (nginx.conf: %s)",
            settings.server.host,
            settings.server.port,
            workers,
            root,
            conf,
        )
        Supervisor(children).run()
    finally:
        os.close(lock)


def _clear_pid(run_dir: Path) -> None:
    """A master killed with SIGKILL leaves its pid file, which nginx then refuses to overwrite."""
    (run_dir / "nginx.pid").unlink(missing_ok=True)

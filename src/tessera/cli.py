"""The ``tessera`` command.

``cat``, ``warm``, ``purge`` and ``stats`` open the cache directory themselves. One process owns a
cache directory at a time, so while ``tessera serve`` runs on it they talk to that server instead
(``cat`` and ``stats`` over its HTTP API).

Errors the user can fix end the command with one line on stderr and a non-zero exit (``main``,
``cli_errors``); only bugs show a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tessera.cache import CacheEngine
from tessera.cli_errors import USER_ERRORS, StartupErrors, describe, exit_code
from tessera.cli_tokens import token_app
from tessera.config import ConfigError, Settings, load_settings
from tessera.errors import CacheLocked, TesseraError
from tessera.remote.commands import register as register_storage_commands

app = typer.Typer(help="Serve object storage as if it were a fast local disk.", no_args_is_help=True)
app.add_typer(token_app, name="token")
err = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: $TESSERA_CONFIG).")
]


def main() -> None:
    """The ``tessera`` console script: a user error is reported in one line per problem, no traceback."""
    try:
        app()
    except USER_ERRORS as error:
        label = "configuration error" if isinstance(error, ConfigError) else "error"
        for line in describe(error):
            _report(line, label)
        sys.exit(exit_code(error))


def _report(message: str, label: str = "error", style: str = "red") -> None:
    """One line on stderr, never wrapped, the message printed as it is (no rich markup)."""
    err.print(Text.assemble((f"{label}: ", style), message), soft_wrap=True)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return load_settings(config, **overrides)  # a ConfigError ends the command in ``main``


def _run(settings: Settings, job: Callable[[CacheEngine], Awaitable[T]]) -> T:
    """Run ``job`` on an engine that owns the cache directory (``CacheLocked`` if a server does, or
    shards of ``serve --workers`` run in it)."""
    if _shards(settings) is not None:  # shards as systemd units: no supervisor holds the directory
        raise CacheLocked(f"cache directory {settings.cache.dir} is served by shards")

    async def run_job() -> T:
        async with CacheEngine(settings) as engine:
            return await job(engine)

    return asyncio.run(run_job())


def _server_url(settings: Settings) -> str:
    return f"http://{settings.server.host}:{settings.server.port}"


def _post_to_server(settings: Settings, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Ask the server that owns the cache directory to warm, pin, unpin or purge (its shards, each
    about its own objects, when it runs ``--workers``: ``deploy.shard_ops``)."""
    from tessera.deploy.shard_ops import ShardRefused

    node = _shards(settings)
    if node is None:
        return _ask_server(settings, "POST", action, json=payload)
    try:
        if action in ("warm", "pin"):
            return node.at_home(action, payload, concurrency=payload.get("concurrency", 4))
        return node.everywhere(action, payload)
    except ShardRefused as exc:
        _report(str(exc))
        raise typer.Exit(1) from None


def _shards(settings: Settings) -> Any:
    """The running shards of ``tessera serve --workers`` on this cache directory, or None."""
    from tessera.deploy.shard_ops import ShardedNode, live_shards

    sockets = live_shards(Path(settings.cache.dir))
    return ShardedNode(sockets, _auth(settings), settings.hosting.mount) if sockets else None


def _ask_server(settings: Settings, method: str, action: str, **request: Any) -> dict[str, Any]:
    """One request to the server's cache API, with ``server.token``; a refusal ends the command."""
    url = f"{_server_url(settings)}/api/v1/cache/{action}"
    try:
        response = httpx.request(method, url, headers=_auth(settings), timeout=None, **request)
    except httpx.HTTPError as exc:
        raise _no_server(settings, exc) from None
    if response.status_code != 200:
        _report(f"server answered {response.status_code}: {' '.join(response.text.split())}")
        raise typer.Exit(1)
    return response.json()


def _auth(settings: Settings) -> dict[str, str]:
    """``$TESSERA_TOKEN`` (a scoped token, e.g. with the ``admin`` scope) or ``server.token`` as a
    request header (the server shows details and allows cache operations with it)."""
    token = os.environ.get("TESSERA_TOKEN") or settings.server.token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _no_server(settings: Settings, exc: Exception) -> typer.Exit:
    _report(
        f"the cache directory {settings.cache.dir} is owned by another process, and no server answers "
        f"at {_server_url(settings)}: {exc}"
    )
    return typer.Exit(1)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        str,
        typer.Option(
            help="Cache shards (processes) behind an nginx front on HOST:PORT: a number, or auto (the "
            "cores). 1: one process, no front."
        ),
    ] = "1",
    shard: Annotated[
        int | None,
        typer.Option(
            help="Run only shard K of --workers N (0 to N-1) on its socket <cache.dir>/shard-K/http.sock "
            "(systemd units; the front: tessera front-config --shards N)."
        ),
    ] = None,
) -> None:
    """Run the HTTP server (files API, IIIF, metrics) on the configured cache."""
    import uvicorn

    from tessera.deploy import shards
    from tessera.web.app import create_app
    from tessera.web.connections import (
        ConnectionLimits,
        connection_cap,
        protocol_class,
        raise_open_file_limit,
    )

    settings = _settings(config)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        count = shards.worker_count(workers)
        if shard is not None:
            settings = shards.shard_settings(settings, shard, count)
            socket = shards.shard_socket(settings.cache.dir.parent, shard)
        elif count > 1:
            shards.run_node(settings, config, count, log_level)
            return
    except (ValueError, FileNotFoundError) as exc:
        _report(str(exc))
        raise typer.Exit(2) from None
    # libvips reports every load and shrink at INFO: several lines per tile, none of them news.
    logging.getLogger("pyvips").setLevel(max(logging.WARNING, logging.getLogger().level))
    server = settings.server
    limits = ConnectionLimits(
        header_timeout=server.header_timeout,
        max_connections=connection_cap(server.max_connections, raise_open_file_limit()),
        send_timeout=server.send_timeout,
    )
    # uvicorn's limit_concurrency would count idle sockets and its access log decodes %2F: both are
    # replaced (web.connections, web.limits, web.access_log).
    application = StartupErrors(create_app(settings))
    try:
        if shard is not None:
            socket.parent.mkdir(parents=True, exist_ok=True)
        uvicorn.run(
            application,
            host=server.host,
            port=server.port,
            uds=str(socket) if shard is not None else None,
            # Only the front reaches a shard's socket: its X-Forwarded-For and -Proto are the client's.
            forwarded_allow_ips="*" if shard is not None else None,
            http=protocol_class(limits),
            log_level=log_level,
            access_log=False,
            # uvicorn annotates int, but hands the seconds to loop.call_later: "250ms" must stay 0.25.
            timeout_keep_alive=server.keepalive_timeout,  # type: ignore[arg-type]  # a float works
            timeout_graceful_shutdown=10,
        )
    except SystemExit:
        if application.error is not None:  # uvicorn gave up on a start-up error of the user's
            raise application.error from None
        raise


@app.command()
def mount(
    source: Annotated[
        str, typer.Argument(help="s3://bucket/prefix, http(s)://…, a folder, or a configured mount.")
    ],
    mountpoint: Annotated[Path, typer.Argument(help="An empty directory to mount on.")],
    cache_dir: Annotated[Path, typer.Option(help="Cache directory (the disk tier).")],
    cache_size: Annotated[str, typer.Option(help="Disk tier size (cache.disk_size), e.g. 1TB.")],
    option: Annotated[
        list[str] | None, typer.Option("-o", help="FUSE mount options, comma-separated (e.g. allow_other).")
    ] = None,
    daemon: Annotated[bool, typer.Option(help="Mount in the background and return once mounted.")] = False,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Mount a bucket, folder or HTTP origin read-only, every read through the cache."""
    from tessera.fs.mount import mount_for_source, run_mount, spawn_daemon

    settings = _settings(config, cache={"dir": str(cache_dir), "disk_size": cache_size})
    try:
        name = mount_for_source(settings, source)
    except ValidationError as exc:  # SOURCE is not an origin URL that can be used
        raise ConfigError.from_validation(exc) from None
    except (ValueError, FileNotFoundError) as exc:
        _report(str(exc))
        raise typer.Exit(2) from None
    if not mountpoint.is_dir():
        _report(f"mount point {mountpoint} is not a directory")
        raise typer.Exit(2)
    if daemon:
        argv = [arg for arg in sys.argv if arg != "--daemon"]
        try:
            pid = spawn_daemon(argv, mountpoint, cache_dir / "mount.log")
        except RuntimeError as exc:
            _report(str(exc))
            raise typer.Exit(1) from None
        err.print(f"mounted {source} at {mountpoint} (pid {pid}); unmount with: fusermount3 -u {mountpoint}")
        return
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {o.strip() for opts in option or [] for o in opts.split(",") if o.strip()}
    try:
        run_mount(settings, name, mountpoint.resolve(), options)
    except (TesseraError, RuntimeError) as exc:
        _report(str(exc), "mount failed")
        raise typer.Exit(1) from None


@app.command()
def cat(path: str, config: ConfigOption = None) -> None:
    """Write an object to standard output, reading through the cache."""
    settings = _settings(config)
    out = sys.stdout.buffer

    async def job(engine: CacheEngine) -> None:
        handle = await engine.open(path)
        async for chunk in handle.iter_range():
            out.write(chunk)
        out.flush()

    try:
        _run(settings, job)
    except CacheLocked:
        with httpx.stream("GET", f"{_server_url(settings)}/api/v1/files{path}", timeout=None) as response:
            if response.status_code != 200:
                _report(f"server answered {response.status_code}: {response.read().decode(errors='replace')}")
                raise typer.Exit(1) from None
            for chunk in response.iter_bytes():
                out.write(chunk)
        out.flush()


@app.command()
def warm(
    path: Annotated[str, typer.Argument(help="An object (/images/a.jp2) or a prefix (/images/maps/).")],
    config: ConfigOption = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Objects fetched at once.")] = 4,
    thumbs: Annotated[
        bool, typer.Option("--thumbs", help="Also make the IIIF thumbnails of each image.")
    ] = False,
) -> None:
    """Fetch an object or a whole prefix into the disk tier, with a progress bar."""
    settings = _settings(config)
    if thumbs:
        _warm_thumbnails(settings, path)
        return
    with Progress(
        TextColumn("[bold]warming[/bold] {task.fields[objects]} objects"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("warm", total=None, objects=0)

        def advance(objects: int, nbytes: int) -> None:
            current = progress.tasks[0].fields["objects"]
            progress.update(task, advance=nbytes, objects=current + objects)

        try:
            objects, nbytes = _run(
                settings, lambda e: e.warm(path, concurrency=concurrency, progress=advance)
            )
        except CacheLocked:
            progress.update(task, description="server warming")
            answer = _post_to_server(settings, "warm", {"path": path, "concurrency": concurrency})
            objects, nbytes = answer["objects"], answer["bytes"]
    err.print(f"warmed {objects} objects, {nbytes} bytes")


@app.command()
def pin(
    path: Annotated[str, typer.Argument(help="An object or a prefix to keep local (within cache.pin_size).")],
    config: ConfigOption = None,
) -> None:
    """Pin an object or prefix (never evicted) and fetch it into the disk tier."""
    settings = _settings(config)
    try:
        objects, nbytes = _run(settings, lambda e: e.pin(path))
    except CacheLocked:
        answer = _post_to_server(settings, "pin", {"path": path})
        objects, nbytes = answer["objects"], answer["bytes"]
    err.print(f"pinned {path}: {objects} objects, {nbytes} bytes")


@app.command()
def unpin(
    path: Annotated[str, typer.Argument(help="A pinned object or prefix.")], config: ConfigOption = None
) -> None:
    """Remove a pin; the objects stay cached but can be evicted again."""
    settings = _settings(config)
    try:
        count = _run(settings, lambda e: e.unpin(path))
    except CacheLocked:
        count = _post_to_server(settings, "unpin", {"path": path})["unpinned"]
    err.print(f"unpinned {count} cached object versions")


def _warm_thumbnails(settings: Settings, path: str) -> None:
    """``warm --thumbs``: make the thumbnails here, or ask the server that owns the cache to."""
    from tessera.images.service import ImageService
    from tessera.images.warm_thumbs import make_thumbnails_at

    try:
        report = _run(
            settings, lambda engine: make_thumbnails_at(ImageService(engine, settings.images), path)
        )
        objects, made, skipped = report.objects, report.thumbnails, report.skipped
    except CacheLocked:
        answer = _post_to_server(settings, "warm", {"path": path, "thumbs": True})
        objects, made, skipped = answer["objects"], answer["thumbnails"], answer["skipped"]
    for target, reason in skipped.items():
        _report(reason, f"skipped {target}", "yellow")
    err.print(f"made {made} thumbnails of {objects} objects")


@app.command()
def purge(
    path: Annotated[str, typer.Argument(help="An object or a prefix to drop from every tier.")],
    config: ConfigOption = None,
) -> None:
    """Drop an object, or everything under a prefix, from the cache."""
    settings = _settings(config)
    try:
        dropped = _run(settings, lambda e: e.purge(path))
    except CacheLocked:
        dropped = _post_to_server(settings, "purge", {"path": path})["purged"]
    err.print(f"purged {dropped} cached object versions")


@app.command()
def stats(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    top: Annotated[int, typer.Option(help="How many of the most read objects to list.")] = 10,
) -> None:
    """Bytes per tier, hits and misses, and the most read objects."""
    settings = _settings(config)

    async def job(engine: CacheEngine) -> dict[str, Any]:
        await engine.loaded.wait()
        return await engine.stats(top=top)

    try:
        figures = _run(settings, job)
    except CacheLocked:
        node = _shards(settings)
        figures = node.stats(top) if node else _ask_server(settings, "GET", "stats", params={"top": top})
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    console = Console()
    tiers = Table(title="Cache tiers")
    for column in ("tier", "bytes", "limit", "hits"):
        tiers.add_column(column)
    for name, tier in figures["tiers"].items():
        tiers.add_row(name, f"{tier['bytes']:,}", f"{tier['limit']:,}", f"{figures['hits'].get(name, 0):,}")
    console.print(tiers)
    console.print(f"misses: {figures['misses']:,}  coalesced: {figures['coalesced']:,}")
    if figures.get("top"):  # only with the token, or with server.public_stats
        objects = Table(title="Most read objects")
        for column in ("key", "size", "cached", "hits"):
            objects.add_column(column)
        for row in figures["top"]:
            objects.add_row(row["key"], f"{row['size']:,}", f"{row['cached']:,}", str(row["hits"]))
        console.print(objects)


@app.command("front-config")
def front_config(
    config: ConfigOption = None,
    listen: Annotated[str, typer.Option(help="Where nginx listens: HOST:PORT or PORT.")] = "127.0.0.1:8081",
    node: Annotated[
        list[str] | None,
        typer.Option(
            help="A Tessera node HOST:PORT, repeatable "
            "(default: the config's cluster.nodes, else server.host:server.port)."
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="In front of the N shards of this node (tessera serve --shard K --workers N), not --node.",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="nginx's cache directory (default: <cache.dir>/front).")
    ] = None,
    cache_size: Annotated[str, typer.Option(help="Largest size of nginx's cache, e.g. 1GB.")] = "1GB",
    keys_zone: Annotated[str, typer.Option(help="Shared memory for cache keys (1MB: ~8,000).")] = "16MB",
    fresh: Annotated[
        str | None,
        typer.Option(
            help="Freshness in nginx before a revalidation: the longest the front serves an old rendering "
            "(default: cache.metadata_ttl; with several nodes 1s at most, as nginx cannot purge)."
        ),
    ] = None,
    inactive: Annotated[str, typer.Option(help="Drop cache entries unused this long.")] = "1d",
    prefix: Annotated[
        Path | None, typer.Option(help="nginx's pid, log and temp files (default: <cache.dir>/front-run).")
    ] = None,
    workers: Annotated[str, typer.Option(help="worker_processes: auto or a number.")] = "auto",
    user: Annotated[str | None, typer.Option(help="Workers' user when nginx starts as root.")] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Write PREFIX/access.log (buffered).")
    ] = True,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it here, not to stdout.")
    ] = None,
) -> None:
    """Print an nginx.conf that caches rendered IIIF responses in front of Tessera node(s).

    The nodes are --node, or the --shards of this machine, or else the config's cluster.nodes (a
    cluster: every node runs the same config), or else the one configured server. With several nodes
    each object has one home (consistent hash), a node that fails is left out for cluster.fail_timeout
    and its objects go to their next home, and hosted uploads go to the least busy node.
    """
    from tessera.config import parse_duration
    from tessera.deploy.nginx import CLUSTER_FRESH, render_nginx_conf
    from tessera.deploy.shards import shard_nodes

    settings = _settings(config)
    root = Path(settings.cache.dir).resolve()
    cache = (cache_dir or root / "front").resolve()
    run_dir = (prefix or root / "front-run").resolve()
    try:
        if shards is not None and node:
            raise ValueError("--shards and --node exclude each other")
        if shards is not None:
            nodes = shard_nodes(root, shards)
        else:
            local = [_local_node(settings.server.host, settings.server.port)]
            nodes = node or settings.cluster.nodes or local
        fresh_s = settings.cache.metadata_ttl if fresh is None else parse_duration(fresh)
        if fresh is None and shards is None and len(nodes) > 1:
            fresh_s = min(fresh_s, CLUSTER_FRESH)
        text = render_nginx_conf(
            nodes=nodes,
            hosting_mount=settings.hosting.mount,
            max_body=max(settings.storage.max_upload_size, settings.hosting.max_upload_size),
            listen=listen,
            cache_dir=cache,
            prefix=run_dir,
            cache_size=cache_size,
            keys_zone=keys_zone,
            fresh=fresh_s,
            fail_timeout=settings.cluster.fail_timeout,
            inactive=parse_duration(inactive),
            worker_processes=int(workers) if workers.isdigit() else workers,
            access_log=access_log,
            user=user,
            conf_file=output.resolve() if output else None,
        )
    except ValueError as exc:
        _report(str(exc))
        raise typer.Exit(2) from None
    for directory in (cache, run_dir):  # nginx creates neither a missing parent nor the log directory
        directory.mkdir(parents=True, exist_ok=True)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    err.print(f"wrote {output}; start nginx with: nginx -p {run_dir} -c {output.resolve()}", soft_wrap=True)


def _local_node(host: str, port: int) -> str:
    """The configured server as nginx reaches it: a wildcard address means this machine."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    main()


register_storage_commands(app)  # put, get, ls, rm, import, retrieve: the API of a running server

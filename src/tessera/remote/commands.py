"""``tessera put/get/ls/rm/import/retrieve``: the storage API of a running server, from the shell.

The server is ``--server`` (or ``$TESSERA_SERVER_URL``, else ``server.public_url`` or
``http://server.host:server.port`` of the config); the token is ``--token`` (or ``$TESSERA_TOKEN``,
else ``server.token``). Exit codes scripts can rely on (``EXIT_CODES``): 0 done, 1 anything else,
2 bad command line or config, 3 not found, 4 no or wrong token / not allowed, 5 already exists or
conflict, 6 refused input (bad path, checksum, too large), 7 server or origin failure, 8 no server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from tessera.config import load_settings
from tessera.remote.client import RemoteClient, RemoteError

out = Console()
err = Console(stderr=True)

ServerOption = Annotated[
    str | None,
    typer.Option("--server", envvar="TESSERA_SERVER_URL", help="Server URL (default: from config)."),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="TESSERA_TOKEN", help="Bearer token (default: server.token).")
]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")]


def exit_code(status: int) -> int:
    """The command's exit code for an HTTP status (0: the server could not be reached)."""
    if status == 0:
        return 8
    if status == 404 or status == 410:
        return 3
    if status in (401, 403):
        return 4
    if status in (409, 412):
        return 5
    if status in (400, 405, 413, 415, 416, 422, 460):
        return 6
    return 7 if status >= 500 else 1


@contextmanager
def _client(server: str | None, token: str | None, config: Path | None) -> Iterator[RemoteClient]:
    if server is None or token is None:
        settings = load_settings(config)
        if server is None:
            server = settings.server.public_url or f"http://{settings.server.host}:{settings.server.port}"
        token = token or settings.server.token
    client = RemoteClient(server, token)
    try:
        yield client
    except RemoteError as error:
        err.print(f"[red]error:[/red] {error}", soft_wrap=True, markup=True, highlight=False)
        raise typer.Exit(exit_code(error.status)) from None
    finally:
        client.close()


def _transfer() -> Progress:
    """A progress bar on stderr (quiet when stderr is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )


def put(
    local: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    path: Annotated[str, typer.Argument(help="Virtual path to store it at, e.g. /files/a/b.tif.")],
    create_only: Annotated[bool, typer.Option("--create-only", help="Fail (exit 5) if it exists.")] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Upload a file (large files through tus: run the same command again to resume)."""
    size = local.stat().st_size
    with _client(server, token, config) as client, _transfer() as bar:
        task = bar.add_task(local.name, total=size)
        stored = client.put(local, path, create_only=create_only, progress=lambda n: bar.advance(task, n))
    out.print_json(json.dumps(stored))


def get(
    path: Annotated[str, typer.Argument(help="Virtual path of the object.")],
    local: Annotated[
        Path | None, typer.Argument(help="File to write (default: its name; - for stdout).")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Download an object (written to a temporary file renamed into place when complete)."""
    with _client(server, token, config) as client:
        if local is not None and str(local) == "-":
            client.get(path, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        target = local or Path(path.rstrip("/").rsplit("/", 1)[-1])
        partial = target.with_name(f".{target.name}.part")
        size = int(client.stat(path)["size"])
        try:
            with _transfer() as bar, partial.open("wb") as file:
                task = bar.add_task(target.name, total=size)
                client.get(path, file, progress=lambda n: bar.advance(task, n))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    err.print(f"{path} -> {target} ({size} bytes)", highlight=False)


def ls(
    prefix: Annotated[str, typer.Argument(help="Virtual prefix, e.g. /files/scans/.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r")] = False,
    long: Annotated[bool, typer.Option("--long", "-l", help="Size, modification time and ETag too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """List objects under a prefix (one level unless --recursive)."""
    with _client(server, token, config) as client:
        for entry in client.list(prefix, recursive=recursive):
            if as_json:
                print(json.dumps(entry))
            elif "prefix" in entry:
                print(entry["prefix"])
            elif long:
                modified, etag = entry.get("modified", ""), entry.get("etag", "")
                print(f"{entry['size']:>14}  {modified}  {entry['path']}  {etag}")
            else:
                print(entry["path"])


def rm(
    paths: Annotated[list[str], typer.Argument(help="Virtual paths of objects to delete.")],
    server: ServerOption = None,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete objects."""
    with _client(server, token, config) as client:
        for path in paths:
            client.delete(path)


def import_(
    source: Annotated[str, typer.Argument(help="file:///dir on the server's node, or s3://bucket/prefix.")],
    path: Annotated[str, typer.Argument(help="Virtual prefix to copy into, e.g. /files/incoming/.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job until it ends.")] = True,
    server: ServerOption = None,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Start a bulk import job on the server (and follow it). Exits 1 if any file failed."""
    with _client(server, token, config) as client:
        job = client.start_import(source, path)
        if not wait:
            out.print_json(json.dumps(job))
            return
        with Progress(
            TextColumn("import {task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not err.is_terminal,
            transient=True,
        ) as bar:
            task = bar.add_task("import", total=None, state="queued")

            def show(status: dict[str, Any]) -> None:
                done = int(status.get("done", 0)) + int(status.get("failed", 0))
                bar.update(task, total=status.get("total") or None, completed=done, state=status["state"])

            final = client.wait(job["id"], show)
    out.print_json(json.dumps(final))
    if final["state"] != "done" or final.get("failed"):
        raise typer.Exit(1)


def retrieve(
    path: Annotated[str, typer.Argument(help="Virtual path of the object.")],
    lease: Annotated[int | None, typer.Option("--lease", help="Seconds the file stays pinned.")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Make an object wholly local on the server's node; prints {path, local_path, size, sha256}."""
    with _client(server, token, config) as client:
        out.print_json(json.dumps(client.retrieve(path, lease)))


def register(app: typer.Typer) -> None:
    for command in (put, get, ls, rm, retrieve):
        app.command()(command)
    app.command("import")(import_)

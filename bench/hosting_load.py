"""The hosting reference mix at rising multiples against ``tessera serve`` on its embedded defaults.

The reference design (``shared/seeds/004``) expects 500k uploads and 5M views a day: about 6 uploads/s
and 58 views/s. This replays that mix, open loop (Poisson arrivals, so a slow server is not let off by
a waiting client), at multiples 1, 2, 3, … for ``--seconds`` each: uploads of distinct ~1 MB JPEGs
(multipart, with a token; 2048 x 1365 photo-like pictures, made as the processing bench makes its
own), views of ``/i/{link}`` (default width; half the clients accept WebP) and ``/i/{link}/500.jpg``
over a Zipf(1.1) of the links uploaded so far. A multiple passes with view p99 <= 50 ms,
upload-to-JPEG-derivatives-ready p99 <= 2 s (the JPEG widths are ready when the 201 comes; the
answer's ``derivatives`` is checked, else its status is polled) and no error. The goal: >= 5x on these
2 cores. There is no external reference: the issue sets absolute figures.

    .venv/bin/python bench/hosting_load.py                    # multiples 1 2 3 4 5 6 8, 60 s each
    .venv/bin/python bench/hosting_load.py --multiples 1 5 --seconds 20
    .venv/bin/python bench/hosting_load.py --workers 1 2 --multiples 1 1.5 2 2.5 3 4 --seconds 20

With ``--workers 1 2`` both ``tessera serve --workers 1`` and ``--workers 2`` (two shards behind the
nginx front it starts) run at once, each multiple is replayed against one then the other, and the
multiples reached are compared (issue 13: >= 1.6). The server CPU is that of all its processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from hosting_processing import test_jpeg  # the photo-like test JPEGs of the processing bench

REPO = Path(__file__).resolve().parent.parent
TESSERA = REPO / ".venv" / "bin" / "tessera"
TOKEN = "bench-hosting-token"
UPLOADS_PER_S = 6.0
VIEWS_PER_S = 58.0
#: Issue 13: the multiple reached with --workers 2 ÷ with --workers 1.
WORKERS_GOAL = 1.6


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distinct(jpeg: bytes, n: int) -> bytes:
    """The same picture with a different comment segment: another upload (another sha256)."""
    comment = f"upload {n} {os.urandom(8).hex()}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


COLUMNS = ["multiple", "uploads/s", "views/s", "view p50 ms", "view p99 ms"]
COLUMNS += ["ready p50 ms", "ready p99 ms", "errors"]


@dataclass
class Round:
    multiple: float
    view_latencies: list[float] = field(default_factory=list)
    ready_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    views: int = 0
    uploads: int = 0

    def p(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    def row(self, seconds: float) -> str:
        """A line of the results table (``COLUMNS``)."""
        views, ready = self.view_latencies, self.ready_latencies
        cells = [
            f"x{self.multiple:g}",
            f"{self.uploads / seconds:.1f}",
            f"{self.views / seconds:.1f}",
            f"{self.p(views, 0.5) * 1000:.1f}",
            f"{self.p(views, 0.99) * 1000:.1f}",
            f"{self.p(ready, 0.5) * 1000:.0f}",
            f"{self.p(ready, 0.99) * 1000:.0f}",
            str(len(self.errors)),
        ]
        return f"| {' | '.join(cells)} |"

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and self.p(self.view_latencies, 0.99) <= 0.050
            and self.p(self.ready_latencies, 0.99) <= 2.0
        )


class Load:
    def __init__(self, base: str, jpeg: bytes) -> None:
        self.base = base
        self.jpeg = jpeg
        self.links: list[str] = []
        self.count = 0
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        self.client = httpx.AsyncClient(base_url=base, limits=limits, timeout=30)

    async def upload(self, record: Round | None) -> None:
        self.count += 1
        data = distinct(self.jpeg, self.count)
        started = time.perf_counter()
        try:
            answer = await self.client.post(
                "/api/v1/images",
                files={"file": ("photo.jpg", data, "image/jpeg")},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            if answer.status_code != 201:
                raise RuntimeError(f"upload {answer.status_code} {answer.text[:200]}")
            body = answer.json()
            jpegs = {name for name in body["derivatives"] if name.endswith(".jpg")}
            while len(jpegs) < 3:  # not ready with the answer: poll (never so far)
                await asyncio.sleep(0.02)
                body = (await self.client.get(f"/api/v1/images/{body['link']}")).json()
                jpegs = {name for name in body["derivatives"] if name.endswith(".jpg")}
            elapsed = time.perf_counter() - started
            self.links.append(body["link"])
            if record is not None:
                record.uploads += 1
                record.ready_latencies.append(elapsed)
        except Exception as exc:  # every failure is counted, never hidden
            if record is not None:
                record.errors.append(f"upload: {exc!r}"[:300])

    async def ready(self, link: str, workers: int) -> bool:
        """Whether the link's derive job is done. With several shards, asked of each: the job runs on
        the shard that took the upload and only that shard's row cache learns it is ready (the link's
        home shard keeps the row it read while the job ran)."""
        prefixes = [f"/shards/{k}" for k in range(workers)] if workers > 1 else [""]
        for prefix in prefixes:
            answer = await self.client.get(f"{prefix}/api/v1/images/{link}")
            if answer.json()["status"] == "ready":
                return True
        return False

    def pick(self, rng: random.Random) -> str:
        """A link by Zipf(1.1) rank, the most recent uploads not favoured over the oldest."""
        n = len(self.links)
        while True:
            rank = int(rng.paretovariate(1.1))  # P(rank > r) = r**-1.1: a Zipf-like tail
            if rank <= n:
                return self.links[rank - 1]

    async def view(self, record: Round, rng: random.Random) -> None:
        link = self.pick(rng)
        if rng.random() < 0.75:
            url, accept = f"/i/{link}", "image/webp,*/*" if rng.random() < 0.5 else "image/jpeg"
        else:
            url, accept = f"/i/{link}/500.jpg", "*/*"
        started = time.perf_counter()
        try:
            answer = await self.client.get(url, headers={"Accept": accept})
            if answer.status_code != 200 or not answer.content:
                raise RuntimeError(f"view {url} {answer.status_code}")
            record.view_latencies.append(time.perf_counter() - started)
            record.views += 1
        except Exception as exc:
            record.errors.append(f"view: {exc!r}"[:300])

    async def run(self, multiple: float, seconds: float, seed: int) -> Round:
        record = Round(multiple)
        rng = random.Random(seed)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        next_upload = start + rng.expovariate(UPLOADS_PER_S * multiple)
        next_view = start + rng.expovariate(VIEWS_PER_S * multiple)
        end = start + seconds
        while True:
            now = time.perf_counter()
            soonest = min(next_upload, next_view)
            if soonest >= end:
                break
            if soonest > now:
                await asyncio.sleep(soonest - now)
            if next_upload <= next_view:
                task = asyncio.create_task(self.upload(record))
                next_upload += rng.expovariate(UPLOADS_PER_S * multiple)
            else:
                task = asyncio.create_task(self.view(record, rng))
                next_view += rng.expovariate(VIEWS_PER_S * multiple)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        return record


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and all its descendants (``--workers N``: the supervisor, its shards,
    their job processes and nginx)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, todo = {root}, [root]
    while todo:
        current = todo.pop()
        children = {pid for pid, parent in parents.items() if parent == current} - family
        family |= children
        todo += children
    total = 0.0
    for pid in family:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return total


@contextlib.asynccontextmanager
async def serving(
    args: argparse.Namespace, workers: int
) -> AsyncIterator[tuple[subprocess.Popen[bytes], Load]]:
    """``tessera serve --workers N`` on the embedded defaults, seeded with ready links, until the end."""
    work = Path(tempfile.mkdtemp(prefix=f"tessera-hosting-load-w{workers}-"))
    port = free_port()
    env = {**os.environ, "TESSERA_SERVER__TOKEN": TOKEN, "TESSERA_SERVER__PORT": str(port)}
    env["TESSERA_SERVER__ACCESS_LOG"] = "false"
    command = [str(TESSERA), "serve", "--workers", str(workers)]
    with open(work / "serve.log", "wb") as serve_log:
        server = subprocess.Popen(command, cwd=work, env=env, stderr=serve_log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200 and all(
                    httpx.get(f"{base}/shards/{k}/healthz").status_code == 200
                    for k in range(workers if workers > 1 else 0)
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"tessera serve did not start: {(work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        jpeg = test_jpeg("1MB", 2048, 1365, 1_000_000)
        log(f"--workers {workers} on the embedded defaults in {work}; upload size {len(jpeg) / 1e6:.2f} MB")
        load = Load(base, jpeg)
        for _ in range(args.seed_uploads):
            await load.upload(None)
        for link in load.links:  # their WebP jobs done, so the first round does not measure those
            while not await load.ready(link, workers):
                await asyncio.sleep(0.1)
        log(f"w{workers}: {len(load.links)} links seeded and ready")
        yield server, load
        await load.client.aclose()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


async def measure(
    args: argparse.Namespace, workers: int, server: subprocess.Popen[bytes], load: Load, multiple: float
) -> Round:
    """One round at ``multiple``, with the CPU the server's processes and this client used."""
    cpu_before, wall_before = tree_cpu_seconds(server.pid), time.perf_counter()
    client_before = cpu_seconds(os.getpid())
    record = await load.run(multiple, args.seconds, seed=int(multiple * 1000))
    wall = time.perf_counter() - wall_before
    cpu = (tree_cpu_seconds(server.pid) - cpu_before) / wall
    client_cpu = (cpu_seconds(os.getpid()) - client_before) / wall
    verdict = "PASS" if record.passed else "FAIL"
    usage = f"CPU: server {cpu:.0%}, client {client_cpu:.0%}, load {os.getloadavg()[0]:.1f}"
    log(f"w{workers} {record.row(args.seconds)} {usage}; {verdict}")
    for error in record.errors[:5]:
        log(f"  {error}")
    return record


def best_multiple(rounds: list[Round]) -> float:
    return max((r.multiple for r in rounds if r.passed), default=0)


async def main_async(args: argparse.Namespace) -> int:
    """Every server up at once; each multiple is run against each of them in turn (interleaved, so a
    change in the machine's load falls on all of them)."""
    ladders: dict[int, list[Round]] = {workers: [] for workers in args.workers}
    async with contextlib.AsyncExitStack() as stack:
        nodes = {workers: await stack.enter_async_context(serving(args, workers)) for workers in args.workers}
        for multiple in args.multiples:
            for workers, (server, load) in nodes.items():
                rounds = ladders[workers]
                if args.stop_on_fail and rounds and not rounds[-1].passed:
                    continue
                rounds.append(await measure(args, workers, server, load, multiple))
    for workers, rounds in ladders.items():
        print(
            f"--workers {workers}: highest multiple passing (view p99 <= 50 ms, ready p99 <= 2 s, no error): "
            f"x{best_multiple(rounds):g} (goal >= 5)\n"
        )
        print(f"| {' | '.join(COLUMNS)} |")
        print(f"|{'---|' * len(COLUMNS)}")
        for r in rounds:
            print(r.row(args.seconds))
        print()
    first = args.workers[0]
    for workers in args.workers[1:]:
        mine, theirs = best_multiple(ladders[workers]), best_multiple(ladders[first])
        ratio = mine / theirs if theirs else float("nan")
        verdict = "pass" if ratio >= WORKERS_GOAL else "FAIL"
        print(
            f"--workers {workers} ÷ --workers {first}, multiple reached: x{mine:g} / x{theirs:g} = "
            f"{ratio:.2f} (goal >= {WORKERS_GOAL}): {verdict}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--multiples", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 8])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed-uploads", type=int, default=30)
    parser.add_argument("--stop-on-fail", action="store_true", help="stop at the first multiple that fails")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="tessera serve --workers: a ladder each, in turn"
    )
    parser.add_argument("--keep", action="store_true", help="keep the server's folder")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

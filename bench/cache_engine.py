"""Cache-engine benchmark: Tessera's engine against the planners' counting origin.

Three scenarios, each on a fresh, empty cache directory, each with its reference measured in the
same run (the machine is small and shared, so only same-run ratios mean something):

* ``flood``: 64 concurrent readers of the cold 256 MiB object on one event loop
  (``handle.iter_range()``), against one reader alone on another fresh cache. Also the same with
  the blocking file API (64 threads, ``f.read(1 MiB)``) against one thread alone.
* ``random``: 200 reads of 64 KiB at uniform random offsets (seed = rep) in the cold 1 GiB object
  through one handle, interleaved with direct ranged GETs of the same bytes (obstore, same endpoint),
  which are both the latency reference and the content check.
* ``warm``: the 256 MiB object filled with ``local_path``, then sequential passes through the blocking
  file API against a plain local file with the same bytes, and random 64 KiB hits per second through
  ``CachedFile.pread`` and the async ``handle.pread`` against ``os.pread`` of the local file.

Origin bytes and requests come from the counting proxy's access log (offset before, parse after).
The origin is the kit in /work/shared/bench/fuse (started and seeded here if it is not running, and
stopped at the end only then).

    .venv/bin/python bench/cache_engine.py [--scenario flood|random|warm|all] [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import obstore
from obstore.store import S3Store

from tessera.cache import CacheEngine
from tessera.client import Tessera
from tessera.config import Settings, load_settings

MiB = 1 << 20
BUCKET = "images"
MOUNT = "s3"
KEY_FLOOD = "big/obj256m.bin"
KEY_RANDOM = "big/obj1g.bin"
ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"
DEFAULT_KIT = Path("/work/shared/bench/fuse")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- origin


@dataclass
class LoggedGet:
    """One object GET as the counting proxy logged it."""

    range_header: str
    start: int
    nbytes: int
    status: str


class KitOrigin:
    """The kit's origin (moto behind the nginx counting proxy), driven only through the kit's scripts."""

    def __init__(self, kit: Path) -> None:
        self.kit = kit
        env = os.environ
        bench_dir = env.get("BENCH_DIR") or os.path.join(env.get("TMPDIR") or "/tmp", "tessera-bench")
        self.base = Path(env.get("BASE") or os.path.join(bench_dir, "fuse"))
        self.access_log = Path(env.get("ORIGIN_LOG") or self.base / "nginx" / "access.log")
        self.local_copy = Path(env.get("LOCAL_COPY") or self.base / "local" / "obj256m.bin")
        self.endpoint = f"http://127.0.0.1:{env.get('PROXY_PORT', '19001')}"
        self.started_here = False
        self.manifest: dict[str, Any] = {}

    def _run(self, *args: str, capture: bool = False) -> str:
        result = subprocess.run(
            ["bash", str(self.kit / "origin.sh"), *args],
            check=True,
            text=True,
            stdout=subprocess.PIPE if capture else sys.stderr,
        )
        return result.stdout or ""

    def running(self) -> bool:
        status = self._run("status", capture=True)
        return status.count(" running") >= 2

    def ensure(self) -> None:
        if not self.running():
            log("origin not running: starting it with the kit's origin.sh (installs what is missing)")
            self.started_here = True
            self._run("start")
        self._run("seed")  # idempotent: only missing objects are written
        self.manifest = json.loads((self.base / "manifest.json").read_text())

    def stop_if_started(self) -> None:
        if self.started_here:
            log("stopping the origin this run started")
            self._run("stop")

    def offset(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def summary(self, start: int, key: str) -> dict[str, Any]:
        """Per-key counts from the kit's ``originlog.py`` (GETs, bytes, HEADs, unique bytes)."""
        time.sleep(0.5)  # nginx writes a line when a request completes
        script = str(self.kit / "originlog.py")
        out = subprocess.run(
            [sys.executable, script, str(self.access_log), "--from", str(start), "--key", key, "--json"],
            check=True,
            text=True,
            capture_output=True,
        ).stdout
        parsed = json.loads(out)
        counts = parsed["per_key"][key]
        counts["all_keys_gets"] = parsed["total"]["gets"]
        counts["all_keys_bytes"] = parsed["total"]["bytes"]
        return counts

    def gets(self, start: int, key: str) -> list[LoggedGet]:
        """Every GET of ``key`` logged after byte ``start`` of the access log, with its Range header."""
        wanted = f"/{BUCKET}/{key}"
        found = []
        with self.access_log.open("rb") as f:
            f.seek(start)
            for raw in f:
                fields = raw.decode("utf-8", "replace").rstrip("\n").split("\t")
                if len(fields) < 7 or fields[1] != "GET" or unquote(fields[2]) != wanted:
                    continue
                range_header, status, sent = fields[4], fields[5], fields[6]
                first = 0
                if range_header.startswith("bytes="):
                    first = int(range_header[6:].split("-", 1)[0] or 0)
                found.append(LoggedGet(range_header, first, int(sent) if sent.isdigit() else 0, status))
        return found


# ---------------------------------------------------------------------------------------------- helpers


def make_settings(cache_dir: Path, endpoint: str, block_size: str) -> Settings:
    return load_settings(
        None,
        cache={"dir": str(cache_dir), "disk_size": "4GB", "memory_size": "256MB", "block_size": block_size},
        mounts={
            MOUNT: {
                "origin": f"s3://{BUCKET}",
                "endpoint_url": endpoint,
                "region": REGION,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "path_style": True,
            }
        },
    )


@contextlib.contextmanager
def fresh_cache(root: Path | None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tessera-bench-cache-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class StreamCheck:
    """Checks many readers of one object cheaply: every reader's chunk at an offset must be the very
    object, or equal bytes, of the first chunk seen there; at the end those reference chunks must tile
    the object and hash to the manifest's sha256. So every reader's sha256 is the manifest's without
    hashing the object once per reader (64 x 256 MiB of sha256 would be the benchmark's own cost)."""

    def __init__(self) -> None:
        self.refs: dict[int, bytes] = {}
        self.mismatches = 0

    def check(self, offset: int, chunk: bytes) -> bool:
        ref = self.refs.setdefault(offset, chunk)
        if ref is chunk or ref == chunk:
            return True
        self.mismatches += 1
        return False

    def sha256(self, size: int) -> str | None:
        digest = hashlib.sha256()
        position = 0
        for offset in sorted(self.refs):
            if offset != position:
                return None
            chunk = self.refs[offset]
            digest.update(chunk)
            position += len(chunk)
        return digest.hexdigest() if position == size else None


@dataclass
class ReaderResult:
    nbytes: int = 0
    ok: bool = True
    done_s: float = 0.0
    error: str | None = None


def source_version() -> str:
    """The commit the engine code comes from, and whether src/ differs from it (editable install)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}{' + uncommitted changes in src/' if dirty else ''}"


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------------------------- flood


async def _stream_reader(engine: CacheEngine, path: str, check: StreamCheck, t0: float) -> ReaderResult:
    result = ReaderResult()
    try:
        handle = await engine.open(path)
        async for chunk in handle.iter_range():
            if not check.check(result.nbytes, chunk):
                result.ok = False
            result.nbytes += len(chunk)
    except Exception as exc:
        result.ok, result.error = False, repr(exc)
    result.done_s = time.perf_counter() - t0
    return result


async def _async_readers(
    settings: Settings, path: str, readers: int
) -> tuple[float, list[ReaderResult], Any]:
    async with CacheEngine(settings) as engine:
        check = StreamCheck()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_stream_reader(engine, path, check, t0) for _ in range(readers)))
        wall = time.perf_counter() - t0
        stats = await engine.stats()
    return wall, results, (check, stats)


def _thread_readers(settings: Settings, path: str, readers: int) -> tuple[float, list[ReaderResult], Any]:
    check = StreamCheck()
    results = [ReaderResult() for _ in range(readers)]
    go = threading.Event()
    t0 = 0.0

    def reader(result: ReaderResult) -> None:
        go.wait()
        try:
            with cache.open(path) as f:
                while True:
                    chunk = f.read(MiB)
                    if not chunk:
                        break
                    if not check.check(result.nbytes, chunk):
                        result.ok = False
                    result.nbytes += len(chunk)
        except Exception as exc:
            result.ok, result.error = False, repr(exc)
        result.done_s = time.perf_counter() - t0

    with Tessera(settings) as cache:
        threads = [threading.Thread(target=reader, args=(r,)) for r in results]
        for thread in threads:
            thread.start()
        t0 = time.perf_counter()
        go.set()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - t0
        stats = cache.stats()
    return wall, results, (check, stats)


def _local_threads(local: Path, readers: int, size: int) -> dict[str, Any]:
    """The floor for N blocking readers: N threads reading a plain local file with the same loop."""
    check = StreamCheck()
    results = [ReaderResult() for _ in range(readers)]
    go = threading.Event()
    t0 = 0.0

    def reader(result: ReaderResult) -> None:
        go.wait()
        with open(local, "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                if not check.check(result.nbytes, chunk):
                    result.ok = False
                result.nbytes += len(chunk)
        result.done_s = time.perf_counter() - t0

    threads = [threading.Thread(target=reader, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    return {"readers": readers, "wall_s": wall, "readers_ok": sum(r.ok and r.nbytes == size for r in results)}


def _reader_phase(
    origin: KitOrigin, args: argparse.Namespace, readers: int, threaded: bool
) -> dict[str, Any]:
    key = KEY_FLOOD
    size = origin.manifest[key]["size"]
    with fresh_cache(args.cache_root) as cache_dir:
        settings = make_settings(cache_dir, origin.endpoint, args.block_size)
        load = loadavg()
        start = origin.offset()
        path = f"/{MOUNT}/{key}"
        if threaded:
            wall, results, (check, stats) = _thread_readers(settings, path, readers)
        else:
            wall, results, (check, stats) = asyncio.run(_async_readers(settings, path, readers))
        counts = origin.summary(start, key)
        gets = origin.gets(start, key)
    sha_ok = check.sha256(size) == origin.manifest[key]["sha256"]
    done = [r.done_s for r in results]
    return {
        "readers": readers,
        "wall_s": wall,
        "first_done_s": min(done),
        "median_done_s": statistics.median(done),
        # A reader is correct if each chunk equals the reference chunk and the reference hashes right.
        "readers_ok": sum(1 for r in results if r.ok and r.nbytes == size) if sha_ok else 0,
        "errors": sorted({r.error for r in results if r.error}),
        "mismatched_chunks": check.mismatches,
        "sha256_ok": sha_ok,
        "origin_gets": counts["gets"],
        "origin_heads": counts["heads"],
        "origin_bytes": counts["bytes"],
        "origin_unique_bytes": counts.get("unique_bytes", 0),
        "bytes_over_size": counts["bytes"] / size,
        "get_sizes_mib": dict(Counter(round(g.nbytes / MiB, 2) for g in gets)),
        "coalesced": stats["coalesced"],
        "loadavg_start": load,
    }


def scenario_flood(origin: KitOrigin, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for threaded in (False, True) if args.threads else (False,):
        tag = "threads" if threaded else "async"
        # Alternate which goes first so drift in machine load does not favour one side.
        order = [("single", 1), ("flood", args.readers)]
        if rep % 2 == 0:
            order.reverse()
        for name, readers in order:
            log(f"  flood/{tag}: {name} ({readers} reader(s)) on a fresh cache")
            out[f"{tag}_{name}"] = _reader_phase(origin, args, readers, threaded)
        if threaded and origin.local_copy.exists():
            log(f"  flood/threads: {args.readers} threads reading the local copy (reference)")
            size = origin.manifest[KEY_FLOOD]["size"]
            out["threads_local"] = _local_threads(origin.local_copy, args.readers, size)
    return out


# ---------------------------------------------------------------------------------------------- random


async def _random_reads(
    settings: Settings, origin: KitOrigin, args: argparse.Namespace, rep: int
) -> dict[str, Any]:
    key, size = KEY_RANDOM, args.read_size
    direct = S3Store(
        BUCKET,
        config={
            "endpoint": origin.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )
    rng = random.Random(rep)
    block = settings.cache.block_size
    lat: dict[str, list[float]] = {"engine": [], "direct": [], "span": []}
    span_ranges: list[str] = []
    wrong = 0
    async with CacheEngine(settings) as engine:
        t_open = time.perf_counter()
        handle = await engine.open(f"/{MOUNT}/{key}")
        t_open = time.perf_counter() - t_open
        await obstore.head_async(direct, key)  # the direct client's connection, opened untimed
        offsets = [rng.randrange(0, handle.size - size + 1) for _ in range(args.random_reads)]

        async def via_engine(offset: int) -> bytes:
            return await handle.pread(offset, size)

        async def via_direct(offset: int) -> bytes:
            return bytes(await obstore.get_range_async(direct, key, start=offset, length=size))

        async def via_span(offset: int) -> bytes:
            # What the engine fetches on a miss: the whole blocks under the read. One byte short, so
            # the access log tells these GETs apart from the engine's (which end on a block boundary).
            first = offset // block * block
            end = min(handle.size, (offset + size - 1) // block * block + block) - 1
            span_ranges.append(f"bytes={first}-{end - 1}")
            return bytes(await obstore.get_range_async(direct, key, start=first, end=end))

        calls = {"engine": via_engine, "direct": via_direct, "span": via_span}
        names = list(calls)
        t0 = time.perf_counter()
        for i, offset in enumerate(offsets):
            got: dict[str, bytes] = {}
            for name in names[i % 3 :] + names[: i % 3]:  # rotate who goes first
                t = time.perf_counter()
                got[name] = await calls[name](offset)
                lat[name].append(time.perf_counter() - t)
            within = offset - offset // block * block
            wrong += (
                got["engine"] != got["direct"]
                or len(got["engine"]) != size
                or got["span"][within : within + size] != got["direct"]
            )
        total = time.perf_counter() - t0
        stats = await engine.stats()
    return {
        "offsets": offsets,
        "lat": lat,
        "span_ranges": span_ranges,
        "wrong_reads": wrong,
        "open_s": t_open,
        "total_s": total,
        "stats": stats,
    }


def scenario_random(origin: KitOrigin, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    key, size = KEY_RANDOM, args.read_size
    with fresh_cache(args.cache_root) as cache_dir:
        settings = make_settings(cache_dir, origin.endpoint, args.block_size)
        load = loadavg()
        start = origin.offset()
        log(f"  random: {args.random_reads} x {size} B, seed {rep}, interleaved with direct GETs")
        res = asyncio.run(_random_reads(settings, origin, args, rep))
        counts = origin.summary(start, key)
        gets = origin.gets(start, key)
    # Split the log: the direct GETs are exactly our ranges; everything else is the engine's.
    direct_ranges = Counter(f"bytes={o}-{o + size - 1}" for o in res["offsets"])
    direct_ranges.update(res["span_ranges"])
    engine_gets = []
    for get in gets:
        if direct_ranges[get.range_header] > 0:
            direct_ranges[get.range_header] -= 1
        else:
            engine_gets.append(get)
    direct_bytes = sum(g.nbytes for g in gets) - sum(g.nbytes for g in engine_gets)
    engine_bytes = sum(g.nbytes for g in engine_gets)
    requested = len(res["offsets"]) * size
    out: dict[str, Any] = {
        "reads": len(res["offsets"]),
        "read_size": size,
        "seed": rep,
        "bytes_requested": requested,
        "wrong_reads": res["wrong_reads"],
        "direct_gets_unmatched": sum(direct_ranges.values()),
        "origin_gets_all": counts["gets"],
        "origin_bytes_all": counts["bytes"],
        "origin_heads": counts["heads"],
        "direct_bytes": direct_bytes,
        "direct_gets": len(gets) - len(engine_gets),
        "engine_gets": len(engine_gets),
        "engine_bytes": engine_bytes,
        "amplification": engine_bytes / requested,
        "engine_mib_per_get": engine_bytes / MiB / max(1, len(engine_gets)),
        "engine_get_sizes_mib": dict(Counter(round(g.nbytes / MiB, 2) for g in engine_gets)),
        "open_s": res["open_s"],
        "total_s": res["total_s"],
        "loadavg_start": load,
    }
    for q in (50, 90, 99):
        for name, values in res["lat"].items():
            out[f"{name}_p{q}_ms"] = percentile(values, q / 100) * 1e3
    out["engine_first_ms"] = res["lat"]["engine"][0] * 1e3
    out["engine_hits"] = sum(res["stats"]["hits"].values())
    out["engine_misses"] = res["stats"]["misses"]
    return out


# ---------------------------------------------------------------------------------------------- warm


def _read_sequential(open_file: Callable[[], Any]) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    with open_file() as f:
        while True:
            chunk = f.read(MiB)
            if not chunk:
                break
            n += len(chunk)
    return time.perf_counter() - t, n


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


async def _async_hits(cache: Tessera, path: str, offsets: list[int], size: int) -> tuple[float, list[bytes]]:
    handle = await cache.engine.open(path)
    sample = []
    t = time.perf_counter()
    for i, offset in enumerate(offsets):
        data = await handle.pread(offset, size)
        if i < 64:
            sample.append(data)
    return time.perf_counter() - t, sample


def scenario_warm(origin: KitOrigin, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    key = KEY_FLOOD
    path = f"/{MOUNT}/{key}"
    meta = origin.manifest[key]
    size, size_mb = meta["size"], meta["size"] / 1e6
    out: dict[str, Any] = {"loadavg_start": loadavg()}
    with fresh_cache(args.cache_root) as cache_dir:
        settings = make_settings(cache_dir, origin.endpoint, args.block_size)
        local = origin.local_copy
        if not (local.exists() and local.stat().st_size == size):
            local = cache_dir / "local-copy.bin"  # filled below from the cached file
        start = origin.offset()
        with Tessera(settings) as cache:
            log("  warm: filling the object with local_path")
            t = time.perf_counter()
            cached_path = cache.local_path(path)
            out["fill_s"] = time.perf_counter() - t
            out["fill_MBps"] = size_mb / out["fill_s"]
            out["cached_sha256_ok"] = _sha256_file(cached_path) == meta["sha256"]
            if local.parent == cache_dir:
                shutil.copyfile(cached_path, local)
            out["local_file"] = str(local)
            fill_counts = origin.summary(start, key)
            out["fill_origin_bytes_over_size"] = fill_counts["bytes"] / size
            out["fill_origin_gets"] = fill_counts["gets"]
            warm_start = origin.offset()

            # Page cache hot for both files before timing.
            _read_sequential(functools.partial(open, local, "rb", buffering=0))
            _read_sequential(functools.partial(open, cached_path, "rb", buffering=0))
            log(f"  warm: {args.passes} sequential passes, file API vs local file (f.read(1 MiB))")
            cached_s, local_s = [], []
            for i in range(args.passes):
                pair = [
                    (cached_s, lambda: cache.open(path)),
                    (local_s, functools.partial(open, local, "rb", buffering=0)),
                ]
                if i % 2:
                    pair.reverse()
                for sink, opener in pair:
                    seconds, n = _read_sequential(opener)
                    if n != size:
                        raise RuntimeError(f"sequential pass read {n} bytes, expected {size}")
                    sink.append(seconds)
            with cache.open(path) as f:  # attribution: the same reads without RawIOBase.read/readinto
                t = time.perf_counter()
                position = 0
                while chunk := f.pread(position, MiB):
                    position += len(chunk)
                out["seq_pread_MBps"] = size_mb / (time.perf_counter() - t)
            out["seq_cached_MBps_all"] = [size_mb / s for s in cached_s]
            out["seq_local_MBps_all"] = [size_mb / s for s in local_s]
            out["seq_cached_MBps"] = statistics.median(out["seq_cached_MBps_all"])
            out["seq_local_MBps"] = statistics.median(out["seq_local_MBps_all"])

            rng = random.Random(1000 + rep)
            rsize = args.read_size
            offsets = [rng.randrange(0, size - rsize + 1) for _ in range(args.hits)]
            log(f"  warm: {args.hits} random {rsize} B hits: CachedFile.pread, handle.pread, os.pread(local)")
            fd = os.open(local, os.O_RDONLY)
            try:
                t = time.perf_counter()
                for offset in offsets:
                    os.pread(fd, rsize, offset)
                local_hits_s = time.perf_counter() - t
                reference = [os.pread(fd, rsize, offset) for offset in offsets[:64]]
            finally:
                os.close(fd)
            with cache.open(path) as f:
                t = time.perf_counter()
                for offset in offsets:
                    f.pread(offset, rsize)
                file_hits_s = time.perf_counter() - t
                file_sample = [f.pread(offset, rsize) for offset in offsets[:64]]
            loop = cache.engine.loop
            assert loop is not None
            async_hits_s, async_sample = asyncio.run_coroutine_threadsafe(
                _async_hits(cache, path, offsets, rsize), loop
            ).result()
            out["hits_local_per_s"] = args.hits / local_hits_s
            out["hits_file_per_s"] = args.hits / file_hits_s
            out["hits_async_per_s"] = args.hits / async_hits_s
            out["hits_content_ok"] = file_sample == reference and async_sample == reference
            out["content_ok"] = out["hits_content_ok"] and out["cached_sha256_ok"]
            stats = cache.stats()
            out["engine_hits"] = stats["hits"]
        warm_counts = origin.summary(warm_start, key)
        out["warm_origin_gets"] = warm_counts["gets"]
        out["warm_origin_bytes"] = warm_counts["bytes"]
    return out


# ---------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    metric: str
    measured: list[float]
    reference: list[float] | None
    unit: str
    goal: str = ""
    passes: Callable[[float], bool] | None = None
    ratio_of: str = "ratio"  # "ratio": measured / reference per rep; "value": the goal is on measured
    digits: int = 2
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> list[float]:
        if self.reference is None:
            return []
        return [m / r if r else float("nan") for m, r in zip(self.measured, self.reference, strict=True)]


def _fmt(values: list[float], unit: str, digits: int) -> str:
    med = statistics.median(values)
    text = f"{med:,.{digits}f}{unit}"
    if len(values) > 1:
        text += f" [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"
    return text


def render(title: str, rows: list[Row]) -> str:
    lines = [
        f"### {title}",
        "",
        "| metric | Tessera | reference | ratio | goal | result |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratios = row.ratios()
        judged = statistics.median(ratios) if row.ratio_of == "ratio" and ratios else None
        if row.ratio_of == "value":
            judged = statistics.median(row.measured)
        verdict = ""
        if row.passes is not None and judged is not None:
            verdict = "pass" if row.passes(judged) else "**FAIL**"
        lines.append(
            "| "
            + " | ".join(
                [
                    row.metric,
                    _fmt(row.measured, row.unit, row.digits),
                    _fmt(row.reference, row.unit, row.digits) if row.reference is not None else "—",
                    _fmt(ratios, "x", 2) if ratios else "—",
                    row.goal or "—",
                    verdict or "—",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def flood_rows(reps: list[dict[str, Any]], size: int, tag: str, label: str) -> list[Row]:
    flood = [r[f"{tag}_flood"] for r in reps]
    single = [r[f"{tag}_single"] for r in reps]
    n = flood[0]["readers"]

    def col(runs: list[dict[str, Any]], name: str) -> list[float]:
        return [float(r[name]) for r in runs]

    extra = []
    if tag == "threads" and all("threads_local" in r for r in reps):
        extra.append(
            Row(
                f"{label}: attribution: wall time, {n} readers (ref = {n} threads reading the local copy)",
                col(flood, "wall_s"),
                col([r["threads_local"] for r in reps], "wall_s"),
                " s",
            )
        )
    return [
        Row(
            f"{label}: origin bytes ÷ object size ({n} readers; ref = object size)",
            [b / MiB for b in col(flood, "origin_bytes")],
            [size / MiB] * len(flood),
            " MiB",
            "1.00",
            lambda x: round(x, 2) <= 1.0,
        ),
        Row(
            f"{label}: origin bytes, one reader alone (ref = object size)",
            [b / MiB for b in col(single, "origin_bytes")],
            [size / MiB] * len(single),
            " MiB",
            "1.00",
            lambda x: round(x, 2) <= 1.0,
        ),
        Row(
            f"{label}: origin GETs, {n} readers (ref = one reader alone)",
            col(flood, "origin_gets"),
            col(single, "origin_gets"),
            "",
            digits=0,
        ),
        Row(f"{label}: origin HEADs, {n} readers", col(flood, "origin_heads"), None, "", digits=0),
        Row(
            f"{label}: wall time, {n} readers (ref = one reader alone, fresh cache)",
            col(flood, "wall_s"),
            col(single, "wall_s"),
            " s",
            "≤ 1.2",
            lambda x: x <= 1.2,
        ),
        Row(
            f"{label}: readers with correct content (sha256 = manifest)",
            col(flood, "readers_ok"),
            [float(n)] * len(flood),
            "",
            "all",
            lambda x: x >= 1.0,
            digits=0,
        ),
        *extra,
    ]


def random_rows(reps: list[dict[str, Any]]) -> list[Row]:
    def col(name: str) -> list[float]:
        return [float(r[name]) for r in reps]

    n, size = reps[0]["reads"], reps[0]["read_size"]
    rows = [
        Row(
            f"origin bytes ÷ bytes requested ({n} x {size // 1024} KiB; ref = bytes requested)",
            [b / MiB for b in col("engine_bytes")],
            [b / MiB for b in col("bytes_requested")],
            " MiB",
            "≤ 16",
            lambda x: x <= 16,
        ),
        Row("engine origin GETs", col("engine_gets"), None, "", digits=0),
        Row("engine MiB per GET", col("engine_mib_per_get"), None, " MiB"),
    ]
    for q, goal in ((50, "≤ 1.3"), (90, ""), (99, "")):
        rows.append(
            Row(
                f"read latency p{q} (ref = direct ranged GET, obstore, same endpoint)",
                col(f"engine_p{q}_ms"),
                col(f"direct_p{q}_ms"),
                " ms",
                goal,
                (lambda x: x <= 1.3) if goal else None,
            )
        )
    rows.append(
        Row(
            "attribution: engine p50 (ref = direct GET of the same whole 1-2 blocks the engine fetches)",
            col("engine_p50_ms"),
            col("span_p50_ms"),
            " ms",
        )
    )
    rows.append(
        Row(
            "reads equal to the direct GET",
            [n - r["wrong_reads"] for r in reps],
            [float(n)] * len(reps),
            "",
            "all",
            lambda x: x >= 1.0,
            digits=0,
        )
    )
    return rows


def warm_rows(reps: list[dict[str, Any]]) -> list[Row]:
    def col(name: str) -> list[float]:
        return [float(r[name]) for r in reps]

    return [
        Row(
            "sequential read, file API f.read(1 MiB) (ref = local file, same loop)",
            col("seq_cached_MBps"),
            col("seq_local_MBps"),
            " MB/s",
            "≥ 0.8",
            lambda x: x >= 0.8,
            digits=0,
        ),
        Row(
            "attribution: sequential via CachedFile.pread(pos, 1 MiB), 1 pass (ref = local file)",
            col("seq_pread_MBps"),
            col("seq_local_MBps"),
            " MB/s",
            digits=0,
        ),
        Row(
            "random 64 KiB hits/s, CachedFile.pread (ref = os.pread of the local file)",
            col("hits_file_per_s"),
            col("hits_local_per_s"),
            "/s",
            digits=0,
        ),
        Row(
            "random 64 KiB hits/s, async handle.pread (ref = os.pread of the local file)",
            col("hits_async_per_s"),
            col("hits_local_per_s"),
            "/s",
            digits=0,
        ),
        Row("fill with local_path (cold, one call)", col("fill_MBps"), None, " MB/s", digits=0),
        Row(
            "fill: origin bytes ÷ object size",
            col("fill_origin_bytes_over_size"),
            None,
            "x",
            "1.00",
            lambda x: round(x, 2) <= 1.0,
            ratio_of="value",
        ),
        Row(
            "content: cached file sha256 = manifest, sampled hits = local bytes (1 = yes)",
            [float(r["content_ok"]) for r in reps],
            None,
            "",
            "1",
            lambda x: x == 1,
            ratio_of="value",
            digits=0,
        ),
        Row(
            "origin GETs during warm reads",
            col("warm_origin_gets"),
            None,
            "",
            "0",
            lambda x: x == 0,
            ratio_of="value",
            digits=0,
        ),
    ]


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["flood", "random", "warm", "all"], default="all")
    ap.add_argument("--reps", type=int, default=1, help="repetitions; tables show the median [min-max]")
    ap.add_argument("--readers", type=int, default=64, help="concurrent readers in the flood")
    ap.add_argument("--no-threads", dest="threads", action="store_false", help="skip the threaded flood")
    ap.add_argument("--random-reads", type=int, default=200)
    ap.add_argument("--read-size", type=int, default=65536)
    ap.add_argument("--hits", type=int, default=20000, help="random reads per warm hits/s measurement")
    ap.add_argument("--passes", type=int, default=3, help="sequential passes in the warm scenario")
    ap.add_argument("--block-size", default="1MB")
    ap.add_argument("--cache-root", type=Path, default=None, help="where fresh cache dirs go ($TMPDIR)")
    ap.add_argument("--kit", type=Path, default=Path(os.environ.get("TESSERA_BENCH_KIT", DEFAULT_KIT)))
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = ap.parse_args()

    scenarios = ["flood", "random", "warm"] if args.scenario == "all" else [args.scenario]
    command = "bench/cache_engine.py " + " ".join(sys.argv[1:])
    origin = KitOrigin(args.kit)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    runners = {"flood": scenario_flood, "random": scenario_random, "warm": scenario_warm}
    began = time.time()
    load0 = loadavg()
    source = source_version()  # taken before the run: the engine modules are imported already
    try:
        origin.ensure()
        for rep in range(1, args.reps + 1):
            for name in scenarios:
                log(f"rep {rep}/{args.reps}: {name}")
                results[name].append(runners[name](origin, args, rep))
    finally:
        origin.stop_if_started()

    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    if args.json:
        record = {"command": command, "date": stamp, "source": source, "results": results}
        args.json.write_text(json.dumps(record, indent=1))
    size = origin.manifest[KEY_FLOOD]["size"]
    print(f"## Cache engine benchmark, {stamp}\n")
    print(f"`.venv/bin/python {command.strip()}` — {args.reps} rep(s), median [min-max]; ", end="")
    print(f"{os.cpu_count()} CPUs, 1-min load avg at start {load0}, ", end="")
    print(f"took {time.time() - began:.0f} s; tessera at {source}\n")
    if "flood" in results:
        print(render("flood (cold 256 MiB object)", flood_rows(results["flood"], size, "async", "async")))
        if args.threads:
            print()
            rows = flood_rows(results["flood"], size, "threads", "threads")
            print(render("flood, blocking file API (threads)", rows))
        print()
    if "random" in results:
        print(render("random (cold 1 GiB object)", random_rows(results["random"])))
        print()
    if "warm" in results:
        print(render("warm (256 MiB object cached)", warm_rows(results["warm"])))
        print()
    print("<details><summary>raw</summary>\n")
    for name, runs in results.items():
        for i, run in enumerate(runs, 1):
            print(f"- {name} rep {i}: `{json.dumps(run, default=str)}`")
    print("\n</details>")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Listings through the FUSE mount: ``ls`` of a large directory, and memory while walking a huge tree.

    .venv/bin/python bench/listing.py [--part a|b|both] [--names 200000] [--keys 2000000] [--per-dir 1000]
                                      [--reps 5] [--listing-size 128MB] [--work DIR]

(a) ``ls``: one local directory of ``--names`` empty files is both the reference and the origin of a
    ``tessera mount`` (a local folder origin). After one warm-up listing through the mount (which
    fills the listing cache), ``ls -f`` and ``ls -l`` are timed ``--reps`` times on the mount and on
    the local directory, alternately, in the same run. Goal: mount / local <= 2 (medians).
(b) memory: a local folder origin of ``--keys`` empty files, ``--per-dir`` to a directory, is mounted
    with ``fs.listing_cache_size`` = ``--listing-size``; every directory is listed through the mount
    and every object stat'ed once (``os.scandir`` + ``os.stat``). Reported: the mount process's peak
    RSS (``VmHWM``) against the RSS of the idle mount plus the listing and metadata budgets
    (``cache.metadata_size``, ``--metadata-size``, the engine's map: only bounded once the engine
    honours that key; before that the key is not passed). Goal: peak <= idle + 1.1 x budgets.
    A local folder stands in for a bucket: moto keeps each key as a Python object of several kB and
    takes a PUT request per key (about an hour for 2M keys), while the mount's memory is the same
    whatever origin the listing came from (same names, ObjectInfo per object).

Making the files is not timed; everything made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tessera.config import format_size, parse_size

MIB = 2**20
TESSERA = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "tessera")


def make_files(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def is_mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


@contextmanager
def mounted(origin: Path, work: Path, env: dict[str, str]) -> Iterator[tuple[Path, int]]:
    """``tessera mount`` of ``origin`` in the foreground; yields the mount point and the process id."""
    mountpoint, cache = work / "mnt", work / "cache"
    mountpoint.mkdir(exist_ok=True)
    settings = {"TESSERA_FS__LISTING_TTL": "1h", "TESSERA_CACHE__METADATA_TTL": "1h", **env}
    with open(work / "mount.log", "ab") as log:
        process = subprocess.Popen(
            [TESSERA, "mount", str(origin), str(mountpoint), "--cache-dir", str(cache), "--cache-size=1GB"],
            env={**os.environ, **settings},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"mount failed; see {work / 'mount.log'}")
            time.sleep(0.05)
        yield mountpoint, process.pid
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        process.wait(timeout=60)


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def part_a(work: Path, count: int, reps: int) -> bool:
    folder = work / "origin"
    print(f"(a) making {count:,} empty files …", file=sys.stderr)
    make_files(folder / "big", [f"IMG_{n:07d}.tif" for n in range(count)])
    ok = True
    with mounted(folder, work, {}) as (mountpoint, _pid):
        through = mountpoint / "big"
        warm_up = timed(["ls", "-f", str(through)])
        local_dir = folder / "big"
        timed(["ls", "-f", str(local_dir)])  # the local directory's dentries warm too
        print(f"\n(a) ls of a {count:,}-name directory (warm-up listing through the mount {warm_up:.2f} s)\n")
        print("| command | mount median s | local median s | ratio | goal | runs (mount / local) |")
        print("|---|---|---|---|---|---|")
        for flag in ("-f", "-l"):
            ours, local = [], []
            for _ in range(reps):
                ours.append(timed(["ls", flag, str(through)]))
                local.append(timed(["ls", flag, str(local_dir)]))
            ratio = statistics.median(ours) / statistics.median(local)
            ok &= ratio <= 2
            runs = " ".join(f"{t:.3f}" for t in ours) + " / " + " ".join(f"{t:.3f}" for t in local)
            print(
                f"| `ls {flag}` | {statistics.median(ours):.3f} | {statistics.median(local):.3f} | "
                f"{ratio:.2f} | ≤ 2 {'pass' if ratio <= 2 else 'FAIL'} | {runs} |"
            )
    return ok


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def walk_and_stat(root: Path) -> tuple[int, int]:
    """Every directory listed and every object stat'ed once: (directories, objects)."""
    directories, objects = 0, 0
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        directories += 1
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    os.stat(entry.path)
                    objects += 1
    return directories, objects


def part_b(work: Path, keys: int, per_dir: int, listing_size: int, metadata_size: int | None) -> bool:
    folder = work / "bucket"
    print(f"(b) making {keys:,} empty files, {per_dir:,} a directory …", file=sys.stderr)
    for first in range(0, keys, per_dir):
        names = [f"object-{n:09d}.jp2" for n in range(first, min(keys, first + per_dir))]
        make_files(folder / f"shard-{first // per_dir:06d}", names)
    env = {"TESSERA_FS__LISTING_CACHE_SIZE": str(listing_size)}
    if metadata_size is not None:
        env["TESSERA_CACHE__METADATA_SIZE"] = str(metadata_size)
    budgets = listing_size + (metadata_size or 0)
    with mounted(folder, work, env) as (mountpoint, pid):
        time.sleep(1)
        idle = rss(pid)["VmRSS"]
        started = time.perf_counter()
        directories, objects = walk_and_stat(mountpoint)
        elapsed = time.perf_counter() - started
        after = rss(pid)
    if objects != keys:
        sys.exit(f"walked {objects:,} objects, expected {keys:,}")
    limit = idle + 1.1 * budgets
    ok = after["VmHWM"] <= limit
    print(f"\n(b) {objects:,} objects in {directories:,} directories listed and stat'ed in {elapsed:.1f} s\n")
    print("| idle RSS | budgets (listing + metadata) | peak RSS | peak - idle | goal: idle + 1.1 x budgets |")
    print("|---|---|---|---|---|")
    metadata = format_size(metadata_size) if metadata_size is not None else "not passed (unbounded)"
    print(
        f"| {idle / MIB:.0f} MiB | {format_size(listing_size)} + {metadata} | {after['VmHWM'] / MIB:.0f} MiB "
        f"| {(after['VmHWM'] - idle) / MIB:.0f} MiB | ≤ {limit / MIB:.0f} MiB "
        f"{'pass' if ok else 'FAIL'} |"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--names", type=int, default=200_000, help="names in the directory of part (a)")
    parser.add_argument("--keys", type=int, default=2_000_000, help="objects in part (b)")
    parser.add_argument("--per-dir", type=int, default=1000, help="objects per directory in part (b)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--listing-size", default="128MB", help="fs.listing_cache_size in part (b)")
    parser.add_argument(
        "--metadata-size", default=None, help="cache.metadata_size in part (b) (once the engine has it)"
    )
    parser.add_argument("--work", type=Path, default=None, help="where the files go (default: a temp dir)")
    args = parser.parse_args()
    ok = True
    for part in ("a", "b") if args.part == "both" else (args.part,):
        work = Path(tempfile.mkdtemp(prefix=f"tessera-listing-{part}-", dir=args.work))
        try:
            if part == "a":
                ok &= part_a(work, args.names, args.reps)
            else:
                metadata = parse_size(args.metadata_size) if args.metadata_size else None
                ok &= part_b(work, args.keys, args.per_dir, parse_size(args.listing_size), metadata)
        finally:
            print(f"removing {work} …", file=sys.stderr)
            shutil.rmtree(work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

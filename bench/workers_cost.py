"""Where the CPU of a tile goes with ``tessera serve --workers 2``, and what bounds ``--workers 2 ÷ 1``.

Starts ``tessera serve --workers 1`` and ``--workers 2`` (derivative cache off, the kit's TIFF, no
access log, as ``bench/iiif.py --only workers``) and, on the same two shards, extra nginx fronts that
are the rendered front conf with one change each. The kit's wrk runner walks the kit's shuffled
deep-zoom list; each run records req/s, p99 and the CPU per tile of the shards (``c``), of nginx
(``f``) and of wrk (``w``).

With one worker bound by its one Python core and two workers by the machine's 2 cores, the ratio
cannot pass ``2c / (c + f + w)`` (the "bound" column), whatever else runs: ≥ 1.6 needs
``c ≥ 4 (f + w)``. A cheaper shard (lower ``c``) lowers the bound; only a cheaper front or client
raises it.

    .venv/bin/python bench/workers_cost.py --reps 3 --duration 10
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from front_static import Nginx
from iiif import DATA_DIR, IMG_DIR, Kit, Tessera, children_cpu, free_port, log, machine_busy, tree_cpu

IMAGE = "/iiif/2/img%2Fphoto_pyr.tif"

_IIIF = "        location /iiif/ {\n            proxy_pass http://tessera;\n"

#: One change each to the front that ``tessera serve --workers 2`` renders: (as rendered, replacement).
VARIANTS: dict[str, list[tuple[str, str]]] = {
    "front": [],
    # The $tessera_image map is a list of regular expressions tried in turn on every request.
    "pcre-jit": [("pid ", "pcre_jit on;\npid ")],
    "unbuffered": [(_IIIF, _IIIF + "            proxy_buffering off;\n")],
}


def shard_pids(root: int) -> list[int]:
    """The shard processes under ``root`` (not nginx): children running ``serve --shard``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat[1]) == root and b"--shard" in command:
                found.append(int(entry.name))
    return found


def nginx_pid(root: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if int(stat[1]) == root and name == "nginx":
                return int(entry.name)
    raise RuntimeError("no nginx under the supervisor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--conns", default="8,32")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    a = parser.parse_args()
    conns = [int(c) for c in a.conns.split(",")]
    work = DATA_DIR / ("workers-cost-" + time.strftime("%Y%m%dT%H%M%S"))
    work.mkdir(parents=True)
    kit = Kit(work, a.reps, a.duration, a.conns)
    bench = kit.bench
    kit.run("images")
    mounts = {"img": {"origin": f"file://{IMG_DIR}"}}
    w1 = Tessera(work, "w1", mounts, derivative_cache=False, log_level="warning").start()
    w2 = Tessera(work, "w2", mounts, derivative_cache=False, log_level="warning", workers=2).start()
    fronts: list[Nginx] = []
    loads = [os.getloadavg()[0]]
    try:
        urls = work / "urls.txt"
        kit.gen_tiles(f"{w1.base}{IMAGE}", urls)
        kit.gen_tiles(f"{w2.base}{IMAGE}", work / "urls-w2.txt")
        shards = shard_pids(w2.pid)
        rendered = (w2.dir / "cache" / "front-run" / "nginx.conf").read_text()
        plan: list[tuple[str, str, list[int], list[int]]] = [("w1", w1.base, [w1.pid], [])]
        for name in a.variants.split(","):
            if name == "front":
                plan.append(("w2 front", w2.base, shards, [nginx_pid(w2.pid)]))
                continue
            port = free_port()
            text = rendered.replace(f":{w2.port};", f":{port};")
            text = text.replace(str(w2.dir / "cache" / "front-run"), str(work / name / "run"))
            for old, new in VARIANTS[name]:
                if old not in text:
                    raise RuntimeError(f"the rendered front has no {old!r}")
                text = text.replace(old, new)
            front = Nginx(name, work / name, text)
            fronts.append(front.start(port))
            assert front.process is not None
            plan.append((f"w2 {name}", front.base, shards, [front.process.pid]))
        for _name, base, _s, _n in plan:
            bench.run_wrk(base, str(urls), 8, 3)
        results: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for rep in range(1, a.reps + 1):
            for name, base, server, front_pids in plan:
                for c in conns:
                    s0, f0, w0, b0 = tree_cpu(server), tree_cpu(front_pids), children_cpu(), machine_busy()
                    record = bench.run_wrk(base, str(urls), c, a.duration)
                    b1 = machine_busy()
                    n = max(1, record["requests"])
                    record["c"] = (tree_cpu(server) - s0) * 1e3 / n
                    record["f"] = (tree_cpu(front_pids) - f0) * 1e3 / n if front_pids else 0.0
                    record["w"] = (children_cpu() - w0) * 1e3 / n
                    record["busy"] = (b1[0] - b0[0]) / (b1[1] - b0[1])
                    bench.drain(base, str(urls))
                    results.setdefault(name, {}).setdefault(c, []).append(record)
                    log(
                        f"{name:14s} c={c:<3d} rep={rep} rps={record['rps']:8.0f} "
                        f"p99={record['lat_p99_ms']:6.1f}ms "
                        f"shards={record['c']:.3f} nginx={record['f']:.3f} wrk={record['w']:.3f} ms/tile "
                        f"busy={record['busy']:.0%} non2xx={record['non2xx3xx']}"
                    )
            loads.append(os.getloadavg()[0])
    finally:
        for front in fronts:
            front.stop()
        w2.stop()
        w1.stop()
    print(
        f"## --workers 2 ÷ 1, CPU per tile, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"`.venv/bin/python bench/workers_cost.py {' '.join(sys.argv[1:])}`\n\n"
        f"1-min load: {', '.join(f'{x:.1f}' for x in loads)} (start, after each rep). Medians of {a.reps} "
        "reps; req/s [min-max]; ratio = req/s ÷ w1's in the same reps; bound = 2c / (c + f + w) with the "
        "one-worker c.\n"
    )
    print("| target | conns | req/s [min-max] | ÷ w1 | p99 ms | shards c ms | nginx f ms | wrk w ms", end="")
    print(" | bound | busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, by_conns in results.items():
        for c, records in by_conns.items():

            def med(key: str, records: list[dict[str, Any]] = records) -> float:
                return statistics.median(r[key] for r in records)

            rps = [r["rps"] for r in records]
            one = results["w1"][c]
            c1 = statistics.median(r["c"] for r in one)
            bound = 2 * c1 / (c1 + med("f") + med("w")) if name != "w1" else float("nan")
            print(
                f"| {name} | {c} | {med('rps'):,.0f} [{min(rps):,.0f}-{max(rps):,.0f}] | "
                f"{med('rps') / statistics.median(r['rps'] for r in one):.2f} | {med('lat_p99_ms'):.1f} | "
                f"{med('c'):.3f} | {med('f'):.3f} | {med('w'):.3f} | {bound:.2f} | {med('busy'):.0%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

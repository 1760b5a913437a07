"""Derivative hits through the nginx front ÷ nginx static (issue 13): where the front loses, change by change.

The ``deriv`` part of ``bench/iiif.py`` measures the front (``tessera front-config`` in front of one
Tessera with the derivative cache on) against the kit's nginx serving one static 22 KB JPEG. This
bench runs, in the same interleaved reps and with the kit's wrk runner (the shuffled 1,552-tile
TIFF list, 2 threads), the front as rendered plus variants of its nginx.conf that each change one
thing, and two static references:

* ``static-tile``: the kit's nginx and its static 22 KB tile (the goal's reference);
* ``no-passthrough``: the front as rendered, on a second Tessera with ``[images] tile_passthrough =
  false`` (tiles re-encoded at ``jpeg_quality`` instead of the TIFF's stored Q90 tiles): smaller bytes;
* ``static-same``: nginx with the front's own settings serving the very bytes the front serves
  (every tile of the list saved as a file, same URLs): what the proxy cache costs beyond a file of
  the same size.

Each variant is a separate nginx on the same warmed Tessera with its own (warmed) cache. Beside
req/s and p99, the nginx CPU per request (its master and workers) and wrk's.

    .venv/bin/python bench/front_static.py --reps 3 --duration 10
    .venv/bin/python bench/front_static.py --variants front,buf4k --conns 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iiif import (
    DATA_DIR,
    IMG_DIR,
    REPO,
    VENV_BIN,
    Kit,
    Tessera,
    children_cpu,
    free_port,
    http_get,
    log,
    machine_busy,
    tree_cpu,
    wait_http,
)

IMAGE = "/iiif/2/img%2Fphoto_pyr.tif"

#: One change each to the rendered nginx.conf: (text as rendered, replacement).
VARIANTS: dict[str, list[tuple[str, str]]] = {
    "front": [],
    # The cache file's header is read into a proxy_buffer_size buffer: 64k reads the whole tile too.
    "buf4k": [("proxy_buffer_size 64k;", "proxy_buffer_size 4k;")],
    "workers1": [("worker_processes 2;", "worker_processes 1;")],
    "nopush": [("tcp_nopush off;", "tcp_nopush on;")],
    "nostatus": [("            add_header X-Cache-Status $upstream_cache_status always;\n", "")],
    "key": [
        (
            'proxy_cache_key "$request_method$scheme://$http_host$request_uri$tessera_accept";',
            'proxy_cache_key "$request_uri";',
        )
    ],
    "nosendfile": [("    sendfile on;\n", "    sendfile off;\n")],
    # The front keeps hits' cache files open (open_file_cache); this variant opens each one anew.
    "no-ofc": [("            open_file_cache max=10000 inactive=60s;\n", "")],
}


class Nginx:
    """One nginx on a conf file of ours."""

    def __init__(self, name: str, folder: Path, conf: str) -> None:
        self.name = name
        self.dir = folder
        self.conf = conf
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> Nginx:
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        path = self.dir / "nginx.conf"
        path.write_text(self.conf)
        self.process = subprocess.Popen(
            ["nginx", "-p", str(self.dir / "run"), "-c", str(path), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{port}"
        wait_http(f"{self.base}/healthz", f"nginx {self.name}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def render_front(tessera: Tessera, folder: Path, port: int) -> str:
    """What ``bench/iiif.py``'s Front runs: ``tessera front-config`` with 2 nginx workers, no log."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "rendered.conf"
    subprocess.run(
        [
            str(VENV_BIN / "tessera"), "front-config", "--config", str(tessera.dir / "tessera.toml"),
            "--listen", f"127.0.0.1:{port}", "--node", f"127.0.0.1:{tessera.port}",
            "--cache-dir", str(folder / "cache"), "--prefix", str(folder / "run"),
            "--workers", "2", "--user", "root", "--no-access-log", "-o", str(conf),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return conf.read_text()


def variant(text: str, changes: list[tuple[str, str]]) -> str:
    for old, new in changes:
        if old not in text:
            raise RuntimeError(f"the rendered nginx.conf has no {old!r}: update VARIANTS")
        text = text.replace(old, new)
    return text


def static_same_conf(rendered: str, root: Path) -> str:
    """The front's conf with every location replaced by files under ``root`` (same URLs)."""
    head, _, _ = rendered.partition("        location /iiif/ {")
    return (
        head
        + f"        location / {{\n            root {root};\n"
        + "            types { image/jpeg jpg; }\n        }\n"
        + "        location = /healthz { return 200 ok; }\n    }\n}\n"
    )


def save_tiles(base: str, urls: Path, root: Path) -> int:
    """Every tile of the list, fetched from ``base``, as a file at its decoded path under ``root``."""
    total = 0
    for line in urls.read_text().split():
        status, body = http_get(base + line)
        if status != 200:
            raise RuntimeError(f"{line}: {status}")
        path = root / urllib.parse.unquote(line).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        total += len(body)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--conns", default="8,32")
    parser.add_argument(
        "--variants",
        default=",".join([*VARIANTS, "no-passthrough"]),
        help=f"comma list of {', '.join(VARIANTS)}, no-passthrough",
    )
    a = parser.parse_args()
    conns = [int(c) for c in a.conns.split(",")]
    work = DATA_DIR / ("front-static-" + time.strftime("%Y%m%dT%H%M%S"))
    work.mkdir(parents=True)
    kit = Kit(work, a.reps, a.duration, a.conns)
    bench = kit.bench
    kit.run("images")
    kit.servers("start-nginx")
    mounts = {"img": {"origin": f"file://{IMG_DIR}"}}
    tessera = Tessera(work, "deriv", mounts, derivative_cache=True, log_level="warning").start()
    fronts: list[Nginx] = []
    servers = [tessera]
    loads = [os.getloadavg()[0]]
    try:
        urls = work / "urls.txt"
        kit.gen_tiles(f"{tessera.base}{IMAGE}", urls)  # every URL once: Tessera renders and keeps them
        targets: list[tuple[str, str, list[int]]] = []
        for name in a.variants.split(","):
            port = free_port()
            node = tessera
            if name == "no-passthrough":
                node = Tessera(work, name + "-tessera", mounts, derivative_cache=True, log_level="warning",
                               images={"tile_passthrough": False}).start()  # fmt: skip
                servers.append(node)
                kit.gen_tiles(f"{node.base}{IMAGE}", work / "urls-requant.txt")
            rendered = render_front(node, work / name, port)
            front = Nginx(name, work / name, variant(rendered, VARIANTS.get(name, []))).start(port)
            fronts.append(front)
            kit.gen_tiles(f"{front.base}{IMAGE}", work / f"urls-{name}.txt")  # warms this front's cache
            assert front.process is not None
            targets.append((name, front.base, [front.process.pid]))
        tiles = work / "tiles"
        nbytes = save_tiles(tessera.base, urls, tiles)
        log(f"static-same: {nbytes / 1552 / 1024:.1f} KiB a tile on average")
        port = free_port()
        same = static_same_conf(render_front(tessera, work / "static-same", port), tiles)
        fronts.append(Nginx("static-same", work / "static-same", same).start(port))
        assert fronts[-1].process is not None
        targets.append(("static-same", fronts[-1].base, [fronts[-1].process.pid]))
        static_urls = work / "static.txt"
        static_urls.write_text("/static/tile.jpg\n")
        kit_pid = int((Path(kit.env.get("RUN_DIR") or DATA_DIR / "run") / "nginx.pid").read_text().split()[0])
        plan = [(name, base, str(urls), pids) for name, base, pids in targets]
        plan.append(("static-tile", f"http://127.0.0.1:{kit.nginx_port}", str(static_urls), [kit_pid]))
        for _name, origin, url_file, _pids in plan:
            bench.run_wrk(origin, url_file, 8, 3)
        results: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for rep in range(1, a.reps + 1):
            for name, origin, url_file, pids in plan:
                for c in conns:
                    cpu0, wrk0, busy0 = tree_cpu(pids), children_cpu(), machine_busy()
                    record = bench.run_wrk(origin, url_file, c, a.duration)
                    busy1 = machine_busy()
                    n = max(1, record["requests"])
                    record["nginx_us"] = (tree_cpu(pids) - cpu0) * 1e6 / n
                    record["wrk_us"] = (children_cpu() - wrk0) * 1e6 / n
                    record["busy"] = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
                    record["bytes_per_req"] = record["bytes"] / n
                    results.setdefault(name, {}).setdefault(c, []).append(record)
                    log(
                        f"{name:12s} c={c:<3d} rep={rep} rps={record['rps']:9.1f} "
                        f"p99={record['lat_p99_ms']:6.2f}ms "
                        f"nginx={record['nginx_us']:5.1f}us wrk={record['wrk_us']:5.1f}us "
                        f"busy={record['busy']:.0%} non2xx={record['non2xx3xx']}"
                    )
            loads.append(os.getloadavg()[0])
    finally:
        for front in fronts:
            front.stop()
        for server in servers:
            server.stop()
        kit.servers("stop-nginx")
        shutil.rmtree(work / "tiles", ignore_errors=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    print(
        f"## front ÷ nginx static, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC (Tessera "
        f"{commit.stdout.strip()}), `.venv/bin/python bench/front_static.py {' '.join(sys.argv[1:])}`\n\n"
        f"1-min load: {', '.join(f'{x:.1f}' for x in loads)} (start, after each rep). "
        f"Medians of {a.reps} reps [min-max of req/s]; ratio = req/s ÷ static-tile's in the same reps.\n"
    )
    print("| target | conns | req/s [min-max] | ratio ÷ static-tile | p99 ms | bytes/req", end="")
    print(" | nginx µs/req | wrk µs/req | busy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, by_conns in results.items():
        for c, records in by_conns.items():
            rps = [r["rps"] for r in records]
            ref = statistics.median(r["rps"] for r in results["static-tile"][c])

            def med(key: str, records: list[dict[str, Any]] = records) -> float:
                return statistics.median(r[key] for r in records)

            print(
                f"| {name} | {c} | {statistics.median(rps):,.0f} [{min(rps):,.0f}-{max(rps):,.0f}] | "
                f"{statistics.median(rps) / ref:.2f} | {med('lat_p99_ms'):.2f} | "
                f"{med('bytes_per_req'):,.0f} | "
                f"{med('nginx_us'):.1f} | {med('wrk_us'):.1f} | {med('busy'):.0%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

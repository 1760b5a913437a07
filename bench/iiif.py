"""IIIF server benchmark: Tessera against IIPImage, the nginx static ceiling and a whole-file copy.

Runs everything in one invocation, on one machine, and prints a markdown table of same-run ratios:

1. ``tiles``: the planners' kit ``run_anchor.sh compare`` (a shuffled OpenSeadragon deep-zoom
   workload, 256 px tiles, wrk, interleaved with IIPImage) for the pyramidal TIFF and the JPEG 2000,
   Tessera with ``[images] derivative_cache = false`` and no access log (the anchor's nginx has
   none either). Attribution runs (one rep each) turn one fast path off at a time: the stored-tile
   pass-through (TIFF), the decoded codestream tiles (JPEG 2000), and turn the access log on.
2. ``deriv``: Tessera with the derivative cache on; one pass over the whole URL list warms it (the
   kit's ``gen_tiles.py --check``), then the same workload interleaved with nginx serving the kit's
   static 22 KB JPEG (the kit's ``static`` anchor), using the kit's wrk runner. Three targets: the
   nginx front (``tessera front-config``: nginx's HTTP cache in front of Tessera, warmed by its own
   first pass), Tessera alone without and with the access log.
3. ``cold``: a ~1 GB noisy pyramidal JPEG TIFF that lives only in S3 (moto, with the FUSE kit's
   O(range) patch when the kit is there). Time to the first full-resolution tile and origin bytes
   (from Tessera's ``/metrics``), against copying the whole object first (boto3 ``download_file``)
   and rendering the same tile from the local copy.
4. ``memory``: peak RSS (``VmHWM``, plus RSS polled every 20 ms) of the Tessera server process during
   32 concurrent ``/full/max/0/default.jpg`` of the 72 MP TIFF.

    .venv/bin/python bench/iiif.py                       # everything (~12 min)
    .venv/bin/python bench/iiif.py --only tiles,memory   # some parts
    .venv/bin/python bench/iiif.py --reps 3 --duration 15 --json /tmp/iiif.json

The kit folder is used in place and read-only; everything it writes goes under
``$BENCH_DIR/iiif`` (default ``/tmp/tessera-bench``); this script's own files go under
``$BENCH_DIR/iiif/tessera-<timestamp>/`` (configs, logs, caches, the kit's result JSON).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
KIT = Path(os.environ.get("TESSERA_IIIF_KIT", "/work/shared/bench/iiif"))
FUSE_KIT = Path(os.environ.get("TESSERA_BENCH_KIT", "/work/shared/bench/fuse"))
BENCH_DIR = Path(os.environ.get("BENCH_DIR") or Path(os.environ.get("TMPDIR") or "/tmp") / "tessera-bench")
DATA_DIR = BENCH_DIR / "iiif"
IMG_DIR = Path(os.environ.get("IMG_DIR") or DATA_DIR / "img")
BIG_DIR = DATA_DIR / "big"
BIG_NAME = "noise_pyr.tif"
MiB = 1024 * 1024
GiB = 1024 * MiB


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 120.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if http_get(url, timeout=2)[0] < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up at {url}")


def metric(base: str, name: str) -> float:
    """Sum of a Prometheus counter over all its label sets, from Tessera's /metrics."""
    _status, body = http_get(f"{base}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Tessera:
    """One ``tessera serve`` process on its own config, fresh cache directory and port."""

    def __init__(self, work: Path, name: str, mounts: dict[str, dict[str, Any]], **options: Any) -> None:
        self.name = name
        self.dir = work / name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_level = options.pop("log_level", "info")
        self.derivative_cache = options.pop("derivative_cache", False)
        self.access_log = options.pop("access_log", False)  # the anchor's nginx logs no requests either
        self.images: dict[str, Any] = options.pop("images", {})
        self.workers: int = options.pop("workers", 1)  # > 1: `serve --workers N`, shards behind nginx
        self.process: subprocess.Popen[bytes] | None = None
        self.mounts = mounts

    def _toml(self) -> str:
        lines = [
            "[server]",
            'host = "127.0.0.1"',
            f"port = {self.port}",
            f"access_log = {'true' if self.access_log else 'false'}",
            "[cache]",
            f'dir = "{self.dir / "cache"}"',
            'disk_size = "8GB"',
            "[images]",
            f"derivative_cache = {'true' if self.derivative_cache else 'false'}",
            *(f"{key} = {json.dumps(value)}" for key, value in self.images.items()),
        ]
        for mount, keys in self.mounts.items():
            lines.append(f"[mounts.{mount}]")
            for key, value in keys.items():
                lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    def start(self) -> Tessera:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        config = self.dir / "tessera.toml"
        config.write_text(self._toml())
        self.command = [
            str(VENV_BIN / "tessera"), "serve", "--config", str(config), "--log-level", self.log_level,
            "--workers", str(self.workers),
        ]  # fmt: skip
        with open(self.dir / "serve.log", "wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        wait_http(f"{self.base}/healthz", f"tessera {self.name}")
        for k in range(self.workers if self.workers > 1 else 0):
            wait_http(f"{self.base}/shards/{k}/healthz", f"tessera {self.name} shard {k}")
        log(f"tessera {self.name}: pid {self.process.pid} on {self.base} (log level {self.log_level})")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir / "cache", ignore_errors=True)

    def __enter__(self) -> Tessera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Front:
    """nginx as the HTTP cache tier in front of one Tessera, configured by ``tessera front-config``."""

    def __init__(self, work: Path, node: Tessera) -> None:
        self.node = node
        self.dir = work / f"front-{node.name}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Front:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        conf = self.dir / "nginx.conf"
        subprocess.run(
            [
                str(VENV_BIN / "tessera"), "front-config", "--config", str(self.node.dir / "tessera.toml"),
                "--listen", f"127.0.0.1:{self.port}", "--node", f"127.0.0.1:{self.node.port}",
                "--cache-dir", str(self.dir / "cache"), "--prefix", str(self.dir / "run"),
                "--workers", "2", "--user", "root", "--no-access-log", "-o", str(conf),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        self.process = subprocess.Popen(
            ["nginx", "-p", str(self.dir / "run"), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"{self.base}/healthz", "the nginx front")
        log(f"front: nginx pid {self.process.pid} on {self.base} -> {self.node.base}")
        return self

    def cache_statuses(self) -> dict[str, int]:
        """X-Cache-Status of a few tile requests now (HIT expected after the first pass)."""
        counts: dict[str, int] = {}
        for path in ("0,0,256,256/256,", "2048,2048,512,512/256,", "full/162,"):
            with urllib.request.urlopen(f"{self.base}/iiif/2/img%2Fphoto_pyr.tif/{path}/0/default.jpg") as r:
                status = r.headers.get("X-Cache-Status", "none")
                counts[status] = counts.get(status, 0) + 1
        return counts

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.process = None
        shutil.rmtree(self.dir / "cache", ignore_errors=True)


class Kit:
    """The planners' IIIF kit, run in place (it only writes under $BENCH_DIR/iiif)."""

    def __init__(self, work: Path, reps: int, duration: int, conns: str) -> None:
        self.results = work / "results"
        self.env = dict(
            os.environ,
            BENCH_DIR=str(BENCH_DIR),
            IMG_DIR=str(IMG_DIR),
            RESULTS_DIR=str(self.results),
            REPS=str(reps),
            DURATION=str(duration),
            CONNS=conns,
            PYTHONDONTWRITEBYTECODE="1",
        )
        self.nginx_port = int(self.env.get("NGINX_PORT", "18481"))
        self._bench: Any = None

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        command = [str(KIT / "run_anchor.sh"), *args]
        log("kit: " + " ".join(args))
        result = subprocess.run(command, env={**self.env, **(env or {})}, capture_output=True, text=True)
        for line in result.stdout.splitlines():
            log("  | " + line)
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-4000:])
            raise RuntimeError(f"run_anchor.sh {' '.join(args)} failed ({result.returncode})")
        return result.stdout

    def servers(self, verb: str) -> None:
        subprocess.run([str(KIT / "servers.sh"), verb], env=self.env, check=True, capture_output=True)

    @property
    def bench(self) -> Any:
        """The kit's bench.py as a module (its wrk runner, drain and load sampling)."""
        if self._bench is None:
            os.environ["RESULTS_DIR"] = str(self.results)
            sys.dont_write_bytecode = True
            spec = importlib.util.spec_from_file_location("kit_bench", KIT / "bench.py")
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._bench = module
        return self._bench

    def runs(self, name: str, label: str | None = None) -> list[dict[str, Any]]:
        path = self.results / f"{name}.json"
        if not path.exists():
            return []
        records = json.loads(path.read_text()).get("tiles", [])
        if label is None and records:
            label = records[-1]["label"]
        return [r for r in records if r.get("label") == label]

    def gen_tiles(self, base: str, out: Path) -> str:
        """Build the 256 px URL list and GET every URL once (status check; warms caches)."""
        command = [
            sys.executable,
            str(KIT / "gen_tiles.py"),
            base,
            "-o",
            str(out),
            "--tile",
            "256",
            "--check",
        ]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True)
        for line in result.stdout.splitlines():
            log("  | " + line)
        if result.returncode != 0:
            raise RuntimeError(f"gen_tiles --check failed for {base}: {result.stdout[-2000:]}")
        return result.stdout


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_conns: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_conns.setdefault(r["conns"], []).append(r)
    return {
        c: {
            "rps": med([r["rps"] for r in rs]),
            "rps_all": [r["rps"] for r in rs],
            "p50": med([r["lat_p50_ms"] for r in rs]),
            "p99": med([r["lat_p99_ms"] for r in rs]),
            "non2xx": sum(r["non2xx3xx"] for r in rs),
            "errors": sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] for r in rs),
            "kb_per_tile": sum(r["bytes"] for r in rs) / max(1, sum(r["requests"] for r in rs)) / 1000,
            "load": [r["loadavg_before"] for r in rs],
        }
        for c, rs in sorted(by_conns.items())
    }


# ---------------------------------------------------------------------------------------------- 1


def part_tiles(kit: Kit, work: Path, out: dict[str, Any]) -> None:
    mounts = {"img": {"origin": f"file://{IMG_DIR}"}}
    with Tessera(work, "tiles", mounts, derivative_cache=False) as server:
        for kind, file, anchor in (
            ("tiff", "photo_pyr.tif", "iipsrv-tiff"),
            ("jp2", "photo.jp2", "iipsrv-jp2"),
        ):
            name = f"tessera-{kind}"
            base = f"{server.base}/iiif/2/img%2F{file}"
            stdout = kit.run("compare", name, base, kind)
            mine = kit.runs(name)
            label = mine[-1]["label"]
            out[f"tiles_{kind}"] = {
                "base": base,
                "label": label,
                "check": re.findall(r"^check: .*$", stdout, re.M),
                "tessera": summarise(mine),
                "iipsrv": summarise(kit.runs(anchor, label)),
                "ratio_table": [line for line in stdout.splitlines() if line.startswith("|")],
            }
        out["tiles_made"] = made_by(server.base)
    # attribution runs (1 rep each): one fast path off at a time, and the per-request access log on
    for key, name, file, kind, options in (
        ("tiles_tiff_reencode", "tessera-tiff-reencode", "photo_pyr.tif", "tiff",
         {"images": {"tile_passthrough": False}}),
        ("tiles_jp2_nodecoded", "tessera-jp2-nodecoded", "photo.jp2", "jp2",
         {"images": {"decoded_cache": "0"}}),
        ("tiles_tiff_accesslog", "tessera-tiff-accesslog", "photo_pyr.tif", "tiff", {"access_log": True}),
    ):  # fmt: skip
        with Tessera(work, name, mounts, derivative_cache=False, **options) as server:
            base = f"{server.base}/iiif/2/img%2F{file}"
            kit.run("compare", name, base, kind, env={"REPS": "1"})
            mine = kit.runs(name)
            label = mine[-1]["label"]
            out[key] = {
                "base": base,
                "label": label,
                "tessera": summarise(mine),
                "iipsrv": summarise(kit.runs(f"iipsrv-{kind}", label)),
                "made": made_by(server.base),
            }


def made_by(base: str) -> dict[str, float]:
    """How the server made its image responses (``tessera_iiif_responses_total{path}``)."""
    _status, body = http_get(f"{base}/metrics")
    found = re.findall(r'^tessera_iiif_responses_total\{path="(\w+)"\} (\S+)$', body.decode(), re.M)
    return {path: float(count) for path, count in found}


# ---------------------------------------------------------------------------------------------- 2


def part_deriv(kit: Kit, work: Path, out: dict[str, Any], reps: int, duration: int, conns: list[int]) -> None:
    bench = kit.bench
    mounts = {"img": {"origin": f"file://{IMG_DIR}"}}
    urls_dir = work / "urls"
    urls_dir.mkdir(exist_ok=True)
    kit.servers("start-nginx")
    servers = [
        Tessera(work, "deriv", mounts, derivative_cache=True, access_log=True),
        Tessera(work, "deriv-quiet", mounts, derivative_cache=True, log_level="warning"),
    ]
    fronts: list[Front] = []
    try:
        targets = []
        for server in servers:
            server.start()
            base = f"{server.base}/iiif/2/img%2Fphoto_pyr.tif"
            urls = urls_dir / f"{server.name}.txt"
            started = time.monotonic()
            check = kit.gen_tiles(base, urls)  # pass 1: every URL once, renders and stores the derivatives
            first_pass = time.monotonic() - started
            objects_after_first = metric(server.base, "tessera_cache_objects")
            targets.append((f"tessera-{server.name}-tiff", server.base, str(urls), server, first_pass, check))
            out[f"deriv_first_pass_{server.name}"] = {
                "seconds": first_pass,
                "check": re.findall(r"^check: .*$", check, re.M),
                "cache_objects": objects_after_first,
            }
        front = Front(work, servers[1]).start()  # nginx's HTTP cache tier in front of the quiet server
        fronts.append(front)
        urls = urls_dir / "front.txt"
        check = kit.gen_tiles(f"{front.base}/iiif/2/img%2Fphoto_pyr.tif", urls)  # warms nginx's cache
        out["deriv_first_pass_front"] = {"check": re.findall(r"^check: .*$", check, re.M)}
        targets.append(("tessera-front-tiff", front.base, str(urls), servers[1], 0.0, check))
        static = urls_dir / "static.txt"
        static.write_text("/static/tile.jpg\n")
        nginx = f"http://127.0.0.1:{kit.nginx_port}"
        healthz = urls_dir / "healthz.txt"
        healthz.write_text("/healthz\n")
        plan = [(name, origin, urls) for name, origin, urls, *_ in targets] + [
            ("tessera-healthz", servers[1].base, str(healthz)),  # the HTTP stack alone (quiet server)
            ("nginx-static", nginx, str(static)),
        ]
        label = "tessera-deriv-" + time.strftime("%Y%m%dT%H%M%S")
        for _name, origin, urls in plan:  # warm-up, not recorded (as the kit does)
            bench.run_wrk(origin, urls, 8, 3)
            bench.drain(origin, urls)
        for rep in range(1, reps + 1):
            for name, origin, urls in plan:
                for c in conns:
                    load, busy = bench.loadavg(), bench.cpu_busy_other()
                    record = bench.run_wrk(origin, urls, c, duration)
                    record["drain_s"] = bench.drain(origin, urls)
                    record.update(
                        date=bench.DATE, ts=time.strftime("%Y-%m-%dT%H:%M:%S"), rep=rep, conns=c, threads=2,
                        n_urls=Path(urls).read_text().count("\n"), loadavg_before=load, cpu_busy_before=busy,
                        label=label,
                    )  # fmt: skip
                    bench.save(name, "tiles", record)
                    log(
                        f"{name:26s} c={c:<3d} rep={rep} rps={record['rps']:9.1f} "
                        f"p50={record['lat_p50_ms']:7.2f}ms p99={record['lat_p99_ms']:7.2f}ms "
                        f"non2xx={record['non2xx3xx']}"
                    )
        for name, *_ in plan:
            out[f"deriv_{name}"] = summarise(kit.runs(name, label))
        for *_, server, _first, _check in targets:
            out[f"deriv_objects_{server.name}"] = metric(server.base, "tessera_cache_objects")
        for front in fronts:
            out["deriv_front_statuses"] = front.cache_statuses()
    finally:
        for front in fronts:
            front.stop()
        for server in servers:
            server.stop()
        kit.servers("stop-nginx")


# ---------------------------------------------------------------------------------------------- workers


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) the processes ``roots`` and all their descendants have used."""
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
                times[int(entry.name)] = int(fields[11]) + int(fields[12])
    family, todo = set(roots), list(roots)
    while todo:
        current = todo.pop()
        children = {pid for pid, parent in parents.items() if parent == current} - family
        family |= children
        todo += children
    return sum(times.get(pid, 0) for pid in family) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds used by this script's finished child processes (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def part_workers(
    kit: Kit, work: Path, out: dict[str, Any], reps: int, duration: int, conns: list[int]
) -> None:
    """Issue 13: ``serve --workers 2`` (two shards behind the nginx front it starts) against one
    process and IIPImage (the kit's, behind the kit's nginx), interleaved in the same runs: TIFF
    tiles, the derivative cache off (so nginx's HTTP cache is off too)."""
    bench = kit.bench
    mounts = {"img": {"origin": f"file://{IMG_DIR}"}}
    urls_dir = work / "urls-workers"
    urls_dir.mkdir(exist_ok=True)
    kit.run("setup")  # wrk, IIPImage, nginx: installed when missing (compare does it for the tiles part)
    kit.servers("start-iipsrv")
    kit.servers("start-nginx")
    servers = [
        Tessera(work, "w1", mounts, derivative_cache=False, log_level="warning"),
        Tessera(work, "w2", mounts, derivative_cache=False, log_level="warning", workers=2),
    ]
    try:
        run_dir = Path(kit.env.get("RUN_DIR") or BENCH_DIR / "iiif" / "run")
        kit_pids = [int(p) for f in ("iipsrv.pid", "nginx.pid") for p in (run_dir / f).read_text().split()]
        plan = [("iipsrv-tiff", f"http://127.0.0.1:{kit.nginx_port}/iiif/photo_pyr.tif", kit_pids)]
        for server in servers:
            server.start()
            base = f"{server.base}/iiif/2/img%2Fphoto_pyr.tif"
            plan.append((f"tessera-{server.name}-tiff", base, [server.pid]))
        targets = []
        for name, base, pids in plan:
            urls = urls_dir / f"{name}.txt"
            check = kit.gen_tiles(base, urls)  # every URL once: 200s, the same list for every target
            out[f"workers_check_{name}"] = re.findall(r"^check: .*$", check, re.M)
            origin = re.match(r"https?://[^/]+", base).group(0)  # type: ignore[union-attr]
            targets.append((name, origin, str(urls), pids))
        label = "tessera-workers-" + time.strftime("%Y%m%dT%H%M%S")
        for _name, origin, urls, _pids in targets:  # warm-up, not recorded (as the kit does)
            bench.run_wrk(origin, urls, 8, 3)
            bench.drain(origin, urls)
        cpu: dict[str, dict[int, list[tuple[float, float]]]] = {}
        for rep in range(1, reps + 1):
            for name, origin, urls, pids in targets:
                for c in conns:
                    load, busy = bench.loadavg(), bench.cpu_busy_other()
                    cpu_before, machine_before, wrk_before = tree_cpu(pids), machine_busy(), children_cpu()
                    record = bench.run_wrk(origin, urls, c, duration)
                    machine_after = machine_busy()
                    used, wrk_used = tree_cpu(pids) - cpu_before, children_cpu() - wrk_before
                    cpu.setdefault(name, {}).setdefault(c, []).append(
                        (
                            used * 1000 / max(1, record["requests"]),  # server CPU ms per tile
                            (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1]),
                            wrk_used * 1000 / max(1, record["requests"]),  # the client's (wrk) ms per tile
                        )
                    )
                    record["drain_s"] = bench.drain(origin, urls)
                    record.update(
                        date=bench.DATE, ts=time.strftime("%Y-%m-%dT%H:%M:%S"), rep=rep, conns=c, threads=2,
                        n_urls=Path(urls).read_text().count("\n"), loadavg_before=load, cpu_busy_before=busy,
                        label=label,
                    )  # fmt: skip
                    bench.save(name, "tiles", record)
                    log(
                        f"{name:26s} c={c:<3d} rep={rep} rps={record['rps']:9.1f} "
                        f"p50={record['lat_p50_ms']:7.2f}ms p99={record['lat_p99_ms']:7.2f}ms "
                        f"non2xx={record['non2xx3xx']}"
                    )
        out["workers_tiff"] = {name: summarise(kit.runs(name, label)) for name, *_ in targets}
        out["workers_cpu"] = {
            name: {c: {"ms_per_tile": med([v[0] for v in vs]), "machine_busy": med([v[1] for v in vs]),
                       "wrk_ms_per_tile": med([v[2] for v in vs])}
                   for c, vs in by_conns.items()}
            for name, by_conns in cpu.items()
        }  # fmt: skip
    finally:
        for server in servers:
            server.stop()
        kit.servers("stop-nginx")
        kit.servers("stop-iipsrv")


# ---------------------------------------------------------------------------------------------- 3


def make_big(side: int) -> Path:
    """A noisy RGB image (Gaussian noise, sigma 40) as a pyramidal JPEG TIFF, Q95, 256 px tiles."""
    path = BIG_DIR / f"{side}" / BIG_NAME
    if path.exists() and path.stat().st_size > 0:
        return path
    import pyvips

    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"making {path} ({side}x{side} noise, pyramidal JPEG TIFF Q95); once, kept for later runs")
    started = time.monotonic()
    bands = [pyvips.Image.gaussnoise(side, side, mean=128, sigma=40, seed=seed) for seed in (1, 2, 3)]
    image = bands[0].bandjoin(bands[1:]).cast("uchar").copy(interpretation="srgb")
    tmp = path.with_suffix(".tmp.tif")
    image.tiffsave(
        str(tmp),
        tile=True,
        pyramid=True,
        compression="jpeg",
        Q=95,
        tile_width=256,
        tile_height=256,
        bigtiff=True,
    )
    tmp.rename(path)
    log(f"made {path}: {path.stat().st_size / GiB:.2f} GiB in {time.monotonic() - started:.0f} s")
    return path


class Moto:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "moto.log"
        patched = FUSE_KIT / "origin_server.py"
        if patched.exists():  # the FUSE kit's moto: a Range GET costs the range, not the object
            self.command = [str(VENV_BIN / "python"), str(patched), "127.0.0.1", str(self.port)]
            self.kind = "moto 5 with the FUSE kit's O(range) patch (origin_server.py)"
        else:
            self.command = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
            self.kind = "stock moto_server"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Moto:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(4 * GiB))
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_http(self.url, "moto")
        log(f"moto: pid {self.process.pid} on {self.url} ({self.kind})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip


def timed_get(url: str) -> tuple[float, int, int]:
    started = time.monotonic()
    status, body = http_get(url, timeout=300)
    return time.monotonic() - started, status, len(body)


def part_cold(work: Path, out: dict[str, Any], side: int) -> None:
    from boto3.s3.transfer import TransferConfig

    big = make_big(side)
    size = big.stat().st_size
    import pyvips

    header = pyvips.Image.new_from_file(str(big))
    width, height = header.width, header.height
    # a full-resolution tile in the middle of the image, as a viewer zoomed in asks it
    x, y = (width // 2) // 256 * 256, (height // 2) // 256 * 256
    tile = f"{x},{y},256,256/256,/0/default.jpg"
    result: dict[str, Any] = {"file": str(big), "size": size, "width": width, "height": height, "tile": tile}
    with Moto(work) as moto:
        s3 = moto.client()
        s3.create_bucket(Bucket="iiif")
        started = time.monotonic()
        config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB)
        s3.upload_file(str(big), "iiif", BIG_NAME, Config=config)
        result["upload_s"] = time.monotonic() - started
        result["moto"] = moto.kind
        log(f"uploaded {size / GiB:.2f} GiB to moto in {result['upload_s']:.1f} s")
        mount = {
            "origin": "s3://iiif",
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "path_style": True,
            "access_key_id": "testing",
            "secret_access_key": "testing",
        }
        with Tessera(work, "cold-s3", {"s3": mount}) as server:
            url = f"{server.base}/iiif/2/s3%2F{BIG_NAME}/{tile}"
            before = metric(server.base, "tessera_origin_bytes_total")
            gets_before = metric(server.base, "tessera_origin_requests_total")
            seconds, status, nbytes = timed_get(url)
            result["tessera"] = {
                "url": url,
                "seconds": seconds,
                "status": status,
                "body": nbytes,
                "origin_bytes": metric(server.base, "tessera_origin_bytes_total") - before,
                "origin_requests": metric(server.base, "tessera_origin_requests_total") - gets_before,
            }
            # the next tiles a viewer asks at the same zoom, and info.json, once the headers are known
            seconds2, status2, _ = timed_get(
                f"{server.base}/iiif/2/s3%2F{BIG_NAME}/{x + 256},{y},256,256/256,/0/default.jpg"
            )
            result["tessera"]["neighbour_tile_s"] = seconds2
            result["tessera"]["neighbour_status"] = status2
            result["tessera"]["origin_bytes_after_neighbour"] = (
                metric(server.base, "tessera_origin_bytes_total") - before
            )
            log(f"cold S3 tile: {result['tessera']}")
        copy_dir = work / "copy"
        copy_dir.mkdir(exist_ok=True)
        started = time.monotonic()
        s3.download_file("iiif", BIG_NAME, str(copy_dir / BIG_NAME))  # like `aws s3 cp`: parallel ranged GETs
        result["copy_s"] = time.monotonic() - started
        result["copy_bytes"] = (copy_dir / BIG_NAME).stat().st_size
        log(f"copied {result['copy_bytes'] / GiB:.2f} GiB in {result['copy_s']:.1f} s")
    with Tessera(work, "cold-local", {"local": {"origin": f"file://{copy_dir}"}}) as server:
        url = f"{server.base}/iiif/2/local%2F{BIG_NAME}/{tile}"
        seconds, status, nbytes = timed_get(url)
        result["local"] = {"url": url, "seconds": seconds, "status": status, "body": nbytes}
        log(f"tile from the local copy: {result['local']}")
    shutil.rmtree(copy_dir, ignore_errors=True)
    out["cold"] = result


# ---------------------------------------------------------------------------------------------- 4


def part_memory(work: Path, out: dict[str, Any], files: list[str], clients: int) -> None:
    mounts = {"img": {"origin": f"file://{IMG_DIR}"}}
    for file in files:
        with Tessera(work, f"memory-{file.split('.')[-1]}", mounts, derivative_cache=False) as server:
            url = f"{server.base}/iiif/3/img%2F{file}/full/max/0/default.jpg"
            status_file = Path(f"/proc/{server.pid}/status")

            def field(name: str, status_file: Path = status_file) -> int:
                match = re.search(rf"^{name}:\s+(\d+) kB", status_file.read_text(), re.M)
                return int(match.group(1)) * 1024 if match else 0

            idle = field("VmRSS")
            samples: list[int] = []
            stop = threading.Event()

            def poll(samples: list[int] = samples, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        samples.append(field("VmRSS"))
                    time.sleep(0.02)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(timed_get, [url] * clients))
            wall = time.monotonic() - started
            time.sleep(0.2)
            stop.set()
            poller.join()
            statuses: dict[int, int] = {}
            for _seconds, status, _n in results:
                statuses[status] = statuses.get(status, 0) + 1
            ok = [r for r in results if r[1] == 200]
            out[f"memory_{file}"] = {
                "url": url,
                "clients": clients,
                "vmhwm": field("VmHWM"),
                "rss_peak_polled": max(samples) if samples else 0,
                "rss_idle": idle,
                "rss_after": field("VmRSS"),
                "statuses": statuses,
                "wall_s": wall,
                "body_bytes": ok[0][2] if ok else 0,
                "latency_ok_s": sorted(r[0] for r in ok),
                "latency_503_s": sorted(r[0] for r in results if r[1] == 503),
            }
            log(
                f"memory {file}: VmHWM {field('VmHWM') / MiB:.0f} MiB, "
                f"polled peak {max(samples) / MiB:.0f} MiB, "
                f"statuses {statuses}, {wall:.1f} s"
            )


# ---------------------------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def table(out: dict[str, Any]) -> str:
    rows = ["| metric | Tessera | reference | ratio | goal | result |", "|---|---|---|---|---|---|"]

    def tiles_rows(key: str, what: str, goal: float | None) -> None:
        if key not in out:
            return
        t, ref = out[key]["tessera"], out[key]["iipsrv"]
        for c in sorted(t, key=int):
            if c not in ref:
                continue
            mine, theirs = t[c], ref[c]
            ratio = mine["rps"] / theirs["rps"]
            rows.append(
                f"| {what}, {c} conns: req/s (p50 / p99 ms)"
                f" | {mine['rps']:,.0f} ({mine['p50']:.1f} / {mine['p99']:.1f})"
                f" | IIPImage {theirs['rps']:,.0f} ({theirs['p50']:.1f} / {theirs['p99']:.1f}) | {ratio:.3f}"
                f" | {'≥ 1.0' if goal else '—'} | {verdict(ratio >= goal) if goal else '—'} |"
            )

    tiles_rows("tiles_tiff", "tiles, derivative cache off, pyramidal TIFF", 1.0)
    tiles_rows("tiles_jp2", "tiles, derivative cache off, JPEG 2000", 1.0)
    tiles_rows(
        "tiles_tiff_reencode",
        "attribution: TIFF, `tile_passthrough = false` (every tile decoded, cropped, re-encoded)",
        None,
    )
    tiles_rows(
        "tiles_jp2_nodecoded",
        "attribution: JPEG 2000, `decoded_cache = 0` (every tile's area decoded on its own)",
        None,
    )
    tiles_rows(
        "tiles_tiff_accesslog", "attribution: TIFF, `server.access_log = true` (a log line per request)", None
    )
    static = out.get("deriv_nginx-static")
    for name, what, goal in (
        (
            "deriv_tessera-front-tiff",
            "tiles, derivative cache on, 2nd pass, TIFF, through the nginx front",
            0.5,
        ),
        ("deriv_tessera-deriv-quiet-tiff", "the same, Tessera alone (no front, no access log)", None),
        ("deriv_tessera-deriv-tiff", "the same, Tessera alone, `access_log = true`", None),
        ("deriv_tessera-healthz", "attribution: Tessera `GET /healthz` (`--log-level warning`)", None),
    ):
        if name not in out or not static:
            continue
        for c in sorted(out[name], key=int):
            mine, theirs = out[name][c], static[c]
            ratio = mine["rps"] / theirs["rps"]
            rows.append(
                f"| {what}, {c} conns: req/s (p50 / p99 ms)"
                f" | {mine['rps']:,.0f} ({mine['p50']:.2f} / {mine['p99']:.1f})"
                f" | nginx static {theirs['rps']:,.0f} ({theirs['p50']:.2f} / {theirs['p99']:.1f})"
                f" | {ratio:.4f}"
                f" | {'≥ 0.5' if goal else '—'} | {verdict(ratio >= goal) if goal else '—'} |"
            )
    runs = out.get("workers_tiff")
    if runs:
        one, two, iip = runs["tessera-w1-tiff"], runs["tessera-w2-tiff"], runs["iipsrv-tiff"]
        for c in sorted(two, key=int):
            ratio = two[c]["rps"] / one[c]["rps"]
            rows.append(
                f"| workers: tiles/s, `--workers 2` ÷ `--workers 1`, TIFF, derivative cache off, {c} conns"
                f" (p50 / p99 ms) | {two[c]['rps']:,.0f} ({two[c]['p50']:.1f} / {two[c]['p99']:.1f})"
                f" | 1 worker {one[c]['rps']:,.0f} ({one[c]['p50']:.1f} / {one[c]['p99']:.1f}) | {ratio:.3f}"
                f" | ≥ 1.6 | {verdict(ratio >= 1.6)} |"
            )
        for c in sorted(two, key=int):
            ratio = two[c]["p99"] / iip[c]["p99"]
            rows.append(
                f"| workers: p99, `--workers 2` ÷ IIPImage, {c} conns (req/s)"
                f" | {two[c]['p99']:.1f} ms ({two[c]['rps']:,.0f})"
                f" | IIPImage {iip[c]['p99']:.1f} ms ({iip[c]['rps']:,.0f}) | {ratio:.3f}"
                f" | ≤ 1.0 | {verdict(ratio <= 1.0)} |"
            )
        for c in sorted(one, key=int):
            rows.append(
                f"| workers: `--workers 1` against IIPImage, {c} conns: req/s (p99 ms)"
                f" | {one[c]['rps']:,.0f} ({one[c]['p99']:.1f})"
                f" | IIPImage {iip[c]['rps']:,.0f} ({iip[c]['p99']:.1f})"
                f" | {one[c]['rps'] / iip[c]['rps']:.3f} | — | — |"
            )
        cpu = out.get("workers_cpu", {})
        for c in sorted(one, key=int) if cpu else []:
            w1, w2, ip = (cpu[n][c] for n in ("tessera-w1-tiff", "tessera-w2-tiff", "iipsrv-tiff"))
            rows.append(
                f"| workers: server CPU per tile (all its processes; whole machine busy), {c} conns"
                f" | 2 workers {w2['ms_per_tile']:.3f} ms ({w2['machine_busy']:.0%}); 1 worker"
                f" {w1['ms_per_tile']:.3f} ms ({w1['machine_busy']:.0%})"
                f" | IIPImage + nginx {ip['ms_per_tile']:.3f} ms ({ip['machine_busy']:.0%})"
                f" | {w2['ms_per_tile'] / w1['ms_per_tile']:.3f} | — | — |"
            )
            # What the goal needs: 1.6 x the tiles/s of one worker, at the CPU per tile measured for
            # two workers and for wrk, against the machine's cores.
            need = 1.6 * one[c]["rps"] * (w2["ms_per_tile"] + w2["wrk_ms_per_tile"]) / 1000
            rows.append(
                f"| workers: CPU the goal needs, {c} conns: 1.6 x {one[c]['rps']:,.0f} tiles/s x (server"
                f" {w2['ms_per_tile']:.3f} + wrk {w2['wrk_ms_per_tile']:.3f} ms) | {need:.2f} cores"
                f" | {os.cpu_count()} cores | {need / (os.cpu_count() or 1):.3f} | ≤ 1 | — |"
            )
        errors = sum(r[c]["non2xx"] + r[c]["errors"] for r in runs.values() for c in r)
        rows.append(
            f"| workers: non-2xx responses and socket errors, all runs | {errors} | — | — | 0"
            f" | {verdict(errors == 0)} |"
        )
    cold = out.get("cold")
    if cold and "tessera" in cold and "local" in cold:
        t, loc = cold["tessera"], cold["local"]
        ratio_b = t["origin_bytes"] / cold["copy_bytes"]
        ref_s = cold["copy_s"] + loc["seconds"]
        ratio_s = t["seconds"] / ref_s
        what = f"{cold['size'] / GiB:.2f} GiB TIFF {cold['width']}x{cold['height']} in S3"
        rows.append(
            f"| cold: origin bytes for the first tile ({what}) | {t['origin_bytes'] / MiB:,.1f} MiB"
            f" in {t['origin_requests']:.0f} requests | whole file {cold['copy_bytes'] / MiB:,.1f} MiB"
            f" | {ratio_b:.4f}"
            f" | ≤ 0.05 | {verdict(ratio_b <= 0.05)} |"
        )
        rows.append(
            f"| cold: time to first tile | {t['seconds']:.2f} s | copy {cold['copy_s']:.2f} s + local render"
            f" {loc['seconds']:.2f} s = {ref_s:.2f} s | {ratio_s:.4f} | — | — |"
        )
    for file in ("photo_pyr.tif", "photo.jp2"):
        m = out.get(f"memory_{file}")
        if not m:
            continue
        peak = max(m["vmhwm"], m["rss_peak_polled"])
        statuses = ", ".join(f"{n} x {s}" for s, n in sorted(m["statuses"].items()))
        rows.append(
            f"| memory: peak RSS, {m['clients']} concurrent full/max of {file}"
            f" ({statuses}, {m['wall_s']:.0f} s)"
            f" | {peak / MiB:,.0f} MiB (idle {m['rss_idle'] / MiB:,.0f} MiB)"
            f" | 1,536 MiB (goal) | {peak / (1.5 * GiB):.3f}"
            f" | ≤ 1.5 GiB | {verdict(peak <= 1.5 * GiB)} |"
        )
    for key in ("tiles_made", "tiles_tiff_reencode", "tiles_jp2_nodecoded"):
        made = out.get(key, {}) if key == "tiles_made" else out.get(key, {}).get("made")
        if made:
            counts = ", ".join(f"{path} {count:,.0f}" for path, count in sorted(made.items()) if count)
            what = f"how the responses were made (`tessera_iiif_responses_total`), {key}"
            rows.append(f"| {what} | {counts} | — | — | — | — |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default="tiles,workers,deriv,cold,memory",
        help="comma list: tiles,workers,deriv,cold,memory",
    )
    parser.add_argument("--reps", type=int, default=2, help="interleaved reps of each tile run (kit: REPS)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (kit: DURATION)")
    parser.add_argument("--conns", default="8,32", help="wrk connection counts (kit: CONNS)")
    parser.add_argument("--big-side", type=int, default=18500, help="side of the noisy cold-test image (px)")
    parser.add_argument(
        "--memory-files", default="photo_pyr.tif,photo.jp2", help="comma list of test images for memory"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--json", help="also write every measurement here")
    a = parser.parse_args()
    parts = set(a.only.split(","))
    work = DATA_DIR / ("tessera-" + time.strftime("%Y%m%dT%H%M%S"))
    work.mkdir(parents=True)
    kit = Kit(work, a.reps, a.duration, a.conns)
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/iiif.py", *sys.argv[1:]]),
        "loadavg_start": os.getloadavg()[0],
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    started = time.monotonic()
    kit.run("images")
    try:
        if "tiles" in parts:
            part_tiles(kit, work, out)
        if "workers" in parts:
            part_workers(kit, work, out, a.reps, a.duration, [int(c) for c in a.conns.split(",")])
        if "deriv" in parts:
            part_deriv(kit, work, out, a.reps, a.duration, [int(c) for c in a.conns.split(",")])
        if "cold" in parts:
            part_cold(work, out, a.big_side)
        if "memory" in parts:
            part_memory(work, out, a.memory_files.split(","), a.clients)
    finally:
        out["seconds"] = time.monotonic() - started
        out["loadavg_end"] = os.getloadavg()[0]
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
        (work / "results.json").write_text(json.dumps(out, indent=1))
        log(f"all measurements in {work / 'results.json'} ({out['seconds']:.0f} s)")
    print(f"## IIIF benchmark, {out['date']} (Tessera {out['commit']}), `{out['command']}`\n")
    print(f"{out['seconds']:.0f} s in all; 1-min load average {out['loadavg_start']:.1f} at start, "
          f"{out['loadavg_end']:.1f} at the end.\n")  # fmt: skip
    print(table(out))
    for key in ("tiles_tiff", "tiles_jp2"):
        if key in out:
            print(f"\n{key}: URL check of Tessera + anchor: {out[key]['check']}")


if __name__ == "__main__":
    main()

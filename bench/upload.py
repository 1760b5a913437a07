"""Upload and download through the files API against their references, in one run.

1. ``upload``: a 1 GiB file PUT through ``/api/v1/files/`` into moto S3 (Content-Length, streamed from
   disk by ``http.client``) against boto3's ``upload_file`` of the same file straight to moto, with the
   same part size and concurrency (``storage.part_size``/``upload_concurrency`` = boto3's
   ``multipart_chunksize``/``max_concurrency``). Time ratio (goal <= 1.2), and the server's peak RSS
   (``VmHWM`` of the process, which includes its start, and RSS polled every 20 ms; goal <= 150 MB),
   and the CPU seconds per GiB of the server, moto and the client during each upload. The two take
   turns going first (the first upload into a fresh moto also pays for growing its heap).
2. ``download``: the same 1 GiB file in a local mount, read once through Tessera (now cached), then
   ``curl`` GETs it from Tessera and from nginx serving the file from disk (sendfile), interleaved.
   Throughput ratio (goal >= 0.7).

    .venv/bin/python bench/upload.py                     # both, 3 repetitions each
    .venv/bin/python bench/upload.py --only upload --reps 1 --size 256MB
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tessera.config import parse_size

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
MiB = 1024 * 1024
TOKEN = "bench-token"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url_host: str, port: int, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(url_host, port, timeout=2)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on {url_host}:{port}{path}")


@contextmanager
def process(args: list[str], log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RssPoller:
    """Peak RSS of a process, polled every 20 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def field(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.field("VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def put_file(port: int, path: str, source: Path) -> float:
    """PUT ``source`` with a Content-Length, streamed from disk; seconds until the 201."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=1024 * 1024)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(source.stat().st_size)}
    start = time.perf_counter()
    with open(source, "rb") as body:
        conn.request("PUT", f"/api/v1/files/{path}", body=body, headers=headers)
        response = conn.getresponse()
        text = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 201:
        raise RuntimeError(f"PUT answered {response.status}: {text[:300]!r}")
    return elapsed


def curl_speed(url: str) -> float:
    """Bytes per second of one ``curl`` GET of ``url`` into /dev/null."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_download}", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if out[0] != "200":
        raise RuntimeError(f"GET {url} answered {out[0]}")
    return float(out[1])


def tessera_config(work: Path, port: int, sections: str, part: int, concurrency: int) -> Path:
    config = work / "tessera.toml"
    config.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}
token = "{TOKEN}"
access_log = false
[cache]
dir = "{work / "cache"}"
disk_size = "3GB"
[storage]
max_upload_size = "10GB"
part_size = "{part}"
upload_concurrency = {concurrency}
{sections}
"""
    )
    return config


def bench_upload(work: Path, source: Path, reps: int, part: int, concurrency: int) -> dict[str, float]:
    moto_port, port = free_port(), free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    sections = f"""[mounts.s3]
origin = "s3://bench-upload/data"
endpoint_url = "{moto_url}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
"""
    config = tessera_config(work, port, sections, part, concurrency)
    with process(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], work / "moto.log"
    ) as moto:
        wait_for("127.0.0.1", moto_port, "/moto-api/data.json")
        s3 = boto3.client(
            "s3",
            endpoint_url=moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=concurrency + 2),
        )
        s3.create_bucket(Bucket="bench-upload")
        transfer = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_concurrency=concurrency, use_threads=True
        )
        with process([str(BIN / "tessera"), "serve", "--config", str(config)], work / "serve.log") as server:
            wait_for("127.0.0.1", port, "/healthz")
            api_times, boto_times, server_cpu, moto_api_cpu, moto_boto_cpu = [], [], [], [], []
            client_api_cpu, client_boto_cpu = [], []
            gib = source.stat().st_size / 2**30
            with RssPoller(server.pid) as rss:
                idle = rss.field("VmRSS")
                for rep in range(reps):

                    def api(rep: int = rep) -> None:
                        server_before, moto_before = cpu_seconds(server.pid), cpu_seconds(moto.pid)
                        client_before = own_cpu_seconds()
                        api_times.append(put_file(port, f"s3/api-{rep}.bin", source))
                        client_api_cpu.append((own_cpu_seconds() - client_before) / gib)
                        server_cpu.append((cpu_seconds(server.pid) - server_before) / gib)
                        moto_api_cpu.append((cpu_seconds(moto.pid) - moto_before) / gib)
                        s3.delete_object(Bucket="bench-upload", Key=f"data/api-{rep}.bin")

                    def boto(rep: int = rep) -> None:
                        moto_before, client_before = cpu_seconds(moto.pid), own_cpu_seconds()
                        start = time.perf_counter()
                        s3.upload_file(str(source), "bench-upload", f"data/boto-{rep}.bin", Config=transfer)
                        boto_times.append(time.perf_counter() - start)
                        client_boto_cpu.append((own_cpu_seconds() - client_before) / gib)
                        moto_boto_cpu.append((cpu_seconds(moto.pid) - moto_before) / gib)
                        s3.delete_object(Bucket="bench-upload", Key=f"data/boto-{rep}.bin")

                    # Alternate which goes first: the first 1 GiB into a fresh moto also grows its heap.
                    for run in (api, boto) if rep % 2 == 0 else (boto, api):
                        run()
                    log(
                        f"upload rep {rep}: API {api_times[-1]:.1f} s "
                        f"(server CPU {server_cpu[-1]:.1f} s/GiB, "
                        f"moto CPU {moto_api_cpu[-1]:.1f} s/GiB, client {client_api_cpu[-1]:.1f} s/GiB), "
                        f"boto3 {boto_times[-1]:.1f} s (moto CPU {moto_boto_cpu[-1]:.1f} s/GiB, "
                        f"boto3 client {client_boto_cpu[-1]:.1f} s/GiB)"
                    )
                hwm = rss.field("VmHWM")
            return {
                "api_s": statistics.median(api_times),
                "boto3_s": statistics.median(boto_times),
                "ratio": statistics.median(api_times) / statistics.median(boto_times),
                "rss_idle_mb": idle / 1e6,
                "rss_peak_polled_mb": rss.peak / 1e6,
                "vmhwm_mb": hwm / 1e6,
                "server_cpu_s_per_gib": statistics.median(server_cpu),
                "moto_cpu_api_s_per_gib": statistics.median(moto_api_cpu),
                "moto_cpu_boto3_s_per_gib": statistics.median(moto_boto_cpu),
            }


NGINX_CONF = """daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def bench_download(work: Path, source: Path, reps: int, part: int, concurrency: int) -> dict[str, float]:
    root = work / "files"
    root.mkdir(exist_ok=True)
    served = root / "big.bin"
    if not served.exists():
        os.link(source, served)
    port, nginx_port = free_port(), free_port()
    config = tessera_config(work, port, f'[mounts.local]\norigin = "file://{root}"\n', part, concurrency)
    (work / "nginx-tmp").mkdir(exist_ok=True)
    nginx_conf = work / "nginx.conf"
    nginx_conf.write_text(NGINX_CONF.format(work=work, port=nginx_port, root=root))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tessera_url = f"http://127.0.0.1:{port}/api/v1/files/local/big.bin"
    nginx_url = f"http://127.0.0.1:{nginx_port}/big.bin"
    with (
        process([nginx, "-c", str(nginx_conf), "-p", str(work)], work / "nginx.log"),
        process([str(BIN / "tessera"), "serve", "--config", str(config)], work / "serve.log"),
    ):
        wait_for("127.0.0.1", port, "/healthz")
        wait_for("127.0.0.1", nginx_port, "/")
        log(f"first read through Tessera (fills the cache): {curl_speed(tessera_url) / MiB:.0f} MiB/s")
        curl_speed(nginx_url)  # the page cache holds the file for nginx too
        tessera, reference = [], []
        for rep in range(reps):
            tessera.append(curl_speed(tessera_url))
            reference.append(curl_speed(nginx_url))
            mine, theirs = tessera[-1] / MiB, reference[-1] / MiB
            log(f"download rep {rep}: Tessera {mine:.0f} MiB/s, nginx {theirs:.0f} MiB/s")
    return {
        "tessera_mib_s": statistics.median(tessera) / MiB,
        "nginx_mib_s": statistics.median(reference) / MiB,
        "ratio": statistics.median(tessera) / statistics.median(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="upload,download")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--part-size", default="8MB")
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    size, part = parse_size(options.size), parse_size(options.part_size)
    with tempfile.TemporaryDirectory(prefix="tessera-upload-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers (another user) read the served file below it
        source = work / "source.bin"
        with open(source, "wb") as out:
            for _ in range(size // MiB):
                out.write(os.urandom(MiB))
        log(f"{size / MiB:.0f} MiB source, part size {part / MiB:.0f} MiB, concurrency {options.concurrency}")
        parts = options.only.split(",")
        if "upload" in parts:
            (work / "up").mkdir()
            result = bench_upload(work / "up", source, options.reps, part, options.concurrency)
            print(
                f"| upload {size / MiB:.0f} MiB into moto S3 | API {result['api_s']:.1f} s | "
                f"boto3 {result['boto3_s']:.1f} s | ratio {result['ratio']:.2f} (goal <= 1.2) | "
                f"server RSS idle {result['rss_idle_mb']:.0f} MB, peak polled "
                f"{result['rss_peak_polled_mb']:.0f} MB, VmHWM {result['vmhwm_mb']:.0f} MB (goal <= 150) | "
                f"server CPU {result['server_cpu_s_per_gib']:.1f} s/GiB; moto CPU "
                f"{result['moto_cpu_api_s_per_gib']:.1f} s/GiB (API), "
                f"{result['moto_cpu_boto3_s_per_gib']:.1f} s/GiB (boto3) |"
            )
        if "download" in parts:
            (work / "down").mkdir()
            result = bench_download(work / "down", source, options.reps, part, options.concurrency)
            print(
                f"| download of a cached {size / MiB:.0f} MiB file | "
                f"Tessera {result['tessera_mib_s']:.0f} MiB/s | "
                f"nginx {result['nginx_mib_s']:.0f} MiB/s | ratio {result['ratio']:.2f} (goal >= 0.7) |"
            )


if __name__ == "__main__":
    main()

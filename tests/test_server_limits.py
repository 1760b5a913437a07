"""``tessera serve`` under hostile clients: idle and slowloris sockets, piles of requests, oversized
headers and ranges, and what error bodies, statistics and logs give away. Real server processes only."""

from __future__ import annotations

import json
import resource
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tessera.errors import OriginTimeout, OriginUnavailable
from tessera.web.connections import connection_cap
from tessera.web.errors import public_detail
from tests.support.moto_server import free_port
from tests.support.origin_server import ObjectHTTPServer
from tests.support.tessera_server import TESSERA, tessera_process

DATA = bytes(range(256)) * 64  # 16 KiB
TOKEN = "s3cret"

Server = Callable[..., "Running"]


class Running:
    """A started server: its base URL, process, config file and log file."""

    def __init__(self, base: str, process: subprocess.Popen[bytes], config: Path, log: Path) -> None:
        self.base, self.process, self.config, self.log = base, process, config, log
        self.port = int(base.rsplit(":", 1)[1])

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def start_server(tmp_path: Path, http_origin: ObjectHTTPServer) -> Iterator[Server]:
    """Starts ``tessera serve`` with a local mount ``/local`` and an HTTP mount ``/web``; ``[server]``
    keys as keyword arguments (TOML values)."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "data.bin").write_bytes(DATA)
    (files / "hello.txt").write_text("hello\n")
    with ExitStack() as stack:

        def start(**server: str) -> Running:
            port = free_port()
            name = f"s{port}"
            extra = "".join(f"{key} = {value}\n" for key, value in server.items())
            config = tmp_path / f"{name}.toml"
            config.write_text(
                f"""
[server]
host = "127.0.0.1"
port = {port}
token = "{TOKEN}"
{extra}
[cache]
dir = "{tmp_path / name}"
disk_size = "64MB"
block_size = "64KB"
[origin]
retries = 1
backoff = "10ms"
[mounts.local]
origin = "file://{files}"
[mounts.web]
origin = "{http_origin.url}"
"""
            )
            log = tmp_path / f"{name}.log"
            base, process = stack.enter_context(tessera_process(config, port, log))
            return Running(base, process, config, log)

        yield start


def _open_file_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) limit on open files of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


@contextmanager
def _many_descriptors(count: int) -> Iterator[None]:
    """This test process may hold ``count`` more sockets (soft limit raised to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= count + 256, f"the hard open-file limit ({hard}) is too low for this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server closed ``sock`` (end of stream or reset) within ``wait`` seconds; bytes of a
    response still arriving are read and skipped."""
    deadline = time.monotonic() + wait
    poller = select.poll()  # not select(): these descriptors may be past 1024
    poller.register(sock, select.POLLIN)
    while poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, TimeoutError):
            return True
    return False


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def test_idle_and_slowloris_sockets_do_not_lock_others_out(start_server: Server) -> None:
    """Held open, 1,100 silent sockets and 50 half-sent requests leave the server answering everyone."""
    server = start_server(header_timeout='"60s"')  # nothing is timed out while the test holds them
    soft, hard = _open_file_limits(server.process.pid)
    assert soft == hard and soft > 1_100 + 50 + 1_024, (soft, hard)
    with _many_descriptors(1_200), ExitStack() as held:
        idle = [held.enter_context(server.connect()) for _ in range(1_100)]
        slow = [held.enter_context(server.connect()) for _ in range(50)]
        for sock in slow:
            sock.sendall(SLOW_HEAD)
        with httpx.Client(base_url=server.base, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            read = client.get("/api/v1/files/local/data.bin")
            assert read.status_code == 200 and read.content == DATA
        assert not any(_closed_by_server(sock, 0) for sock in idle[:50] + slow)


def test_slowloris_silent_and_idle_connections_are_closed(start_server: Server) -> None:
    server = start_server(header_timeout='"1s"', keepalive_timeout='"1s"')
    slow = [server.connect() for _ in range(50)]
    silent = server.connect()
    kept_alive = server.connect()
    slow_body = server.connect()
    try:
        for sock in slow:
            sock.sendall(SLOW_HEAD)
        slow_body.sendall(
            b"POST /api/v1/cache/purge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"path": '
        )
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")
        open_slow = set(slow)
        deadline = time.monotonic() + 30
        while open_slow and time.monotonic() < deadline:
            for sock in list(open_slow):
                try:
                    sock.send(b"x")  # one more byte of the header value: a slowloris keeps trickling
                except OSError:
                    open_slow.discard(sock)
                    continue
                if _closed_by_server(sock, 0.01):
                    open_slow.discard(sock)
            time.sleep(0.2)
        assert not open_slow, f"{len(open_slow)} slowloris connections still open"
        assert _closed_by_server(silent, 30)
        assert _closed_by_server(kept_alive, 30)
        assert _closed_by_server(slow_body, 30)  # a declared body that never comes frees its request slot
        # A request whose headers arrive in time is answered, however they are split.
        with server.connect() as prompt:
            for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
                prompt.sendall(piece)
                time.sleep(0.1)
            assert prompt.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in [*slow, silent, kept_alive, slow_body]:
            sock.close()


def test_requests_in_progress_are_bounded_and_healthz_still_answers(
    start_server: Server, http_origin: ObjectHTTPServer
) -> None:
    server = start_server(max_requests="2")
    for key in ("a.bin", "b.bin"):
        http_origin.put(key, DATA)
    http_origin.faults.delay = 4.0  # the origin answers every request 4 s late
    answers: list[int] = []

    def read_slowly(client: httpx.Client, key: str) -> None:
        while (status := client.get(f"/api/v1/files/web/{key}").status_code) == 503:
            time.sleep(0.05)  # lost the race for a slot to a probe below: ask again
        answers.append(status)

    with httpx.Client(base_url=server.base, timeout=60) as client:
        slow = [threading.Thread(target=read_slowly, args=(client, key)) for key in ("a.bin", "b.bin")]
        for thread in slow:
            thread.start()
        deadline = time.monotonic() + 20
        while (busy := client.get("/api/v1/files/local/hello.txt")).status_code == 200:
            assert time.monotonic() < deadline, "the two slow requests never filled the limit"
            time.sleep(0.05)
        assert busy.status_code == 503 and busy.headers["retry-after"]
        assert busy.json()["error"] == "ServiceUnavailable"
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/files/local/hello.txt").status_code == 503  # still at the limit
        http_origin.faults.delay = 0
        for thread in slow:
            thread.join()
        assert answers == [200, 200]
        assert client.get("/api/v1/files/local/hello.txt").status_code == 200


def test_a_client_that_stops_reading_loses_its_request_slot(start_server: Server, tmp_path: Path) -> None:
    server = start_server(max_requests="1", send_timeout='"1s"')
    size = 32 << 20  # far more than the socket buffers between the server and a client that reads nothing
    (tmp_path / "files" / "big.bin").write_bytes(bytes(size))
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    reader.connect(("127.0.0.1", server.port))
    with reader, httpx.Client(base_url=server.base, timeout=30) as client:
        reader.sendall(b"GET /api/v1/files/local/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        poller = select.poll()
        poller.register(reader, select.POLLIN)
        assert poller.poll(20_000), "the response never started"  # so the request holds the one slot
        assert client.get("/api/v1/files/local/hello.txt").status_code == 503
        deadline = time.monotonic() + 30
        while client.get("/api/v1/files/local/hello.txt").status_code == 503:
            assert time.monotonic() < deadline, "the stalled response kept its request slot"
            time.sleep(0.2)
        received = 0
        try:
            while chunk := reader.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < size  # the server dropped the connection


def test_connections_past_the_cap_close_the_longest_idle(start_server: Server) -> None:
    server = start_server(max_connections="40", header_timeout='"60s"')
    with ExitStack() as held:
        idle = [held.enter_context(server.connect()) for _ in range(60)]
        time.sleep(0.5)
        with httpx.Client(base_url=server.base, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
        closed = [sock for sock in idle if _closed_by_server(sock, 0.2)]
        assert len(closed) >= 21  # at least the 20 over the cap, plus room for the client
        assert set(closed) <= set(idle[:41]), "newer idle connections were closed before older ones"


def test_connection_cap_leaves_descriptors_free() -> None:
    assert connection_cap(10_000, 1_048_576) == 10_000
    assert connection_cap(10_000, 4_096) == 3_072
    assert connection_cap(10_000, 1_024) == 768


def test_oversized_request_headers_get_431(start_server: Server) -> None:
    server = start_server()
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431")
    assert b"request headers larger than 65536 bytes" in answer
    assert httpx.get(f"{server.base}/healthz").status_code == 200


def test_request_bodies_are_bounded(start_server: Server) -> None:
    """FastAPI reads a body whole before the route's checks (the token among them) run."""
    server = start_server()
    url = f"{server.base}/api/v1/cache/warm"
    big = b'{"path": "/local/", "x": "' + b"a" * 2_000_000 + b'"}'
    declared = httpx.post(url, content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "limited to 1048576 bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    chunked = httpx.post(url, content=chunks(), headers=auth)
    assert chunked.status_code == 413 and chunked.json()["error"] == "RequestEntityTooLarge"
    small = httpx.post(url, json={"path": "/local/"}, headers=auth)
    assert small.status_code == 200 and small.json()["objects"] == 2


def test_ranges_and_numbers_of_any_length(start_server: Server) -> None:
    server = start_server()
    url = f"{server.base}/api/v1/files/local/data.bin"
    huge = "9" * 25
    beyond = httpx.get(url, headers={"Range": f"bytes={huge}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(DATA)}"
    to_end = httpx.get(url, headers={"Range": f"bytes=100-{huge}"})
    assert to_end.status_code == 206 and to_end.content == DATA[100:]
    suffix = httpx.get(url, headers={"Range": f"bytes=-{huge}"})
    assert suffix.status_code == 206 and suffix.content == DATA
    zeros = httpx.get(url, headers={"Range": "bytes=" + "0" * 100 + "10-" + "0" * 50 + "19"})
    assert zeros.status_code == 206 and zeros.content == DATA[10:20]
    for digits in (4_301, 10_000):  # Python's int() refuses these: a 500 before
        ignored = httpx.get(url, headers={"Range": f"bytes={'1' * digits}-"})
        assert ignored.status_code == 200 and ignored.content == DATA  # ignored, as RFC 9110 allows
        top = httpx.get(f"{server.base}/api/v1/cache/stats", params={"top": "1" * digits})
        assert top.status_code == 400 and "top" in top.json()["detail"]
        assert len(top.text) < 1_000  # the reason, not the input echoed back
        warm = httpx.post(
            f"{server.base}/api/v1/cache/warm",
            content=f'{{"path": "/local/", "concurrency": {"1" * digits}}}',
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        assert warm.status_code == 400 and len(warm.text) < 1_000


def test_origin_failures_tell_what_failed_without_internals(
    start_server: Server, http_origin: ObjectHTTPServer
) -> None:
    server = start_server()
    http_origin.put("maps/a.tif", DATA)
    url = f"{server.base}/api/v1/files/web/maps/a.tif"
    assert httpx.head(url).status_code == 200
    http_origin.fail_next(10, status=503)
    failed = httpx.get(url)
    assert failed.status_code == 502
    assert failed.json() == {"error": "OriginUnavailable", "detail": "origin web failed reading maps/a.tif"}
    http_origin.clear_faults()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listing = httpx.post(f"{server.base}/api/v1/cache/warm", json={"path": "/web/maps/"}, headers=auth)
    assert listing.status_code == 502  # an HTTP origin cannot be listed
    for body in (failed.text, listing.text):
        assert "127.0.0.1" not in body and "http" not in body.lower() and "\\n" not in body
    log = server.log.read_text()
    assert http_origin.url.rstrip("/") in log  # the detail is logged for the operator


def test_public_detail_of_origin_errors() -> None:
    leak = OriginTimeout("origin s3 timed out reading k: Generic { endpoint: http://10.0.0.1:9000 }")
    assert public_detail(leak, "/images/maps/a.tif") == "origin images timed out reading maps/a.tif"
    assert public_detail(OriginUnavailable("origin s3 failed: http://x/"), None) == (
        "an origin failed (details in the server log)"
    )


def test_stats_show_details_only_with_the_token(start_server: Server) -> None:
    server = start_server()
    assert httpx.get(f"{server.base}/api/v1/files/local/hello.txt").status_code == 200
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{server.base}/api/v1/cache/pin", json={"path": "/local/data.bin"}, headers=auth)
    public = httpx.get(f"{server.base}/api/v1/cache/stats")
    assert public.status_code == 200
    assert "top" not in public.json() and "pins" not in public.json()["pinned"]
    assert public.json()["pinned"]["bytes"] == len(DATA)  # totals stay public
    assert "file://" not in public.text and "hello.txt" not in public.text
    wrong = httpx.get(f"{server.base}/api/v1/cache/stats", headers={"Authorization": "Bearer nope"})
    assert "top" not in wrong.json()
    full = httpx.get(f"{server.base}/api/v1/cache/stats", headers=auth).json()
    assert full["top"][0]["key"] == "hello.txt" and full["pinned"]["pins"]
    cli = subprocess.run(
        [TESSERA, "stats", "--json", "--config", str(server.config)],
        capture_output=True,
        check=True,
        text=True,
    )
    assert json.loads(cli.stdout)["top"][0]["key"] == "hello.txt"  # the CLI sends the token


def test_public_stats_switch(start_server: Server) -> None:
    server = start_server(public_stats="true")
    assert httpx.get(f"{server.base}/api/v1/files/local/hello.txt").status_code == 200
    figures = httpx.get(f"{server.base}/api/v1/cache/stats").json()
    assert figures["top"][0]["key"] == "hello.txt"


def test_access_log_keeps_the_path_as_sent(start_server: Server) -> None:
    server = start_server(access_log="true")
    target = "/iiif/3/local%2Fno%20such.png/info.json?x=%2F"
    assert httpx.get(f"{server.base}{target}").status_code == 404
    deadline = time.monotonic() + 10
    while f'"GET {target} HTTP/1.1" 404' not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)


def test_openapi_documents_every_route_and_the_real_errors(start_server: Server) -> None:
    server = start_server()
    document = httpx.get(f"{server.base}/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/iiif/3/{identifier}/info.json",
        "/iiif/3/{identifier}/{region}/{size}/{rotation}/{quality}.{format}",
        "/iiif/2/{identifier}/{region}/{size}/{rotation}/{quality}.{format}",
        "/thumbs/{identifier}/info.json",
        "/thumbs/{identifier}/full/{size}/0/default.jpg",
        "/api/v1/files/{path}",
    ):
        assert path in paths, path
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    warm = paths["/api/v1/cache/warm"]["post"]
    assert warm["security"] == [{"HTTPBearer": []}]
    assert "422" not in warm["responses"]
    error = warm["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["error", "detail"]
    assert "text/plain" in paths["/iiif/3/{identifier}/info.json"]["get"]["responses"]["400"]["content"]
    bad = httpx.post(
        f"{server.base}/api/v1/cache/warm", json={"nope": 1}, headers={"Authorization": "Bearer s3cret"}
    )
    assert bad.status_code == 400 and set(bad.json()) == {"error", "detail"}

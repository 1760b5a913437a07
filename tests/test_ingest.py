"""``POST /api/v1/ingest`` against a real server: allowed files and URLs are copied, everything else is
refused with 403 (outside the allow-list, private addresses reached through a name, redirects)."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera.ingest.allow import AllowList, InvalidSource, SourceRefused, check_address
from tests.support.origin_server import ObjectHTTPServer
from tests.support.tessera_server import tessera_process, write_config

TOKEN = "ingest-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Redirector:
    """An HTTP server answering every GET with a 302 to ``target``."""

    def __init__(self, target: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(
    tmp_path: Path, http_origin: ObjectHTTPServer
) -> Iterator[tuple[httpx.Client, ObjectHTTPServer, Redirector, Path]]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    target = tmp_path / "target"
    port = int(http_origin.url.split(":")[2].split("/")[0])
    redirector = Redirector(f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/x")
    cfg, tessera_port = write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[storage]
max_upload_size = "1MB"
ingest_allow = ["file://{incoming}/", "{http_origin.url}", "http://localhost:{port}/", "{redirector.url}"]
[mounts.data]
origin = "file://{target}"
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    try:
        with (
            tessera_process(cfg, tessera_port, tmp_path / "serve.log") as (base, _),
            httpx.Client(base_url=base) as client,
        ):
            yield client, http_origin, redirector, incoming
    finally:
        redirector.close()


def test_ingest_file_and_url(
    server: tuple[httpx.Client, ObjectHTTPServer, Redirector, Path], tmp_path: Path
) -> None:
    client, origin, _, incoming = server
    (incoming / "a.txt").write_bytes(b"local bytes")
    origin.put("remote/b.bin", b"remote bytes" * 100)
    item = {"source": f"file://{incoming}/a.txt", "path": "/data/in/a.txt"}
    assert client.post("/api/v1/ingest", json=item).status_code == 401
    one = client.post("/api/v1/ingest", json=item, headers=AUTH)
    assert one.status_code == 201, one.text
    assert one.json()["path"] == "/data/in/a.txt" and one.json()["size"] == 11
    both = client.post(
        "/api/v1/ingest",
        json=[item, {"source": origin.object_url("remote/b.bin"), "path": "/data/in/b.bin"}],
        headers=AUTH,
    )
    assert both.status_code == 201, both.text
    assert [answer["size"] for answer in both.json()] == [11, 1200]
    assert client.get("/api/v1/files/data/in/b.bin").content == b"remote bytes" * 100
    assert client.get("/api/v1/files/data/in/a.txt").content == b"local bytes"


def test_ingest_refusals(
    server: tuple[httpx.Client, ObjectHTTPServer, Redirector, Path], tmp_path: Path
) -> None:
    client, origin, redirector, incoming = server
    origin.put("big", b"x" * (2 * 1024 * 1024))
    origin.put("small", b"y")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    (incoming / "link.txt").symlink_to(outside)
    port = origin.url.split(":")[2].split("/")[0]
    cases = {
        f"file://{outside}": 403,  # not under an allowed root
        f"file://{incoming}/link.txt": 403,  # a link out of the root
        "http://example.invalid/x": 403,  # not in the allow-list
        f"http://localhost:{port}/small": 201,  # "localhost" names loopback explicitly
        f"http://127.0.0.1:{port}/big": 413,  # over storage.max_upload_size
        f"{redirector.url}anything": 403,  # 302 to an address the allow-list does not name
        "ftp://127.0.0.1/x": 400,
    }
    for source, status in cases.items():
        answer = client.post("/api/v1/ingest", json={"source": source, "path": "/data/x"}, headers=AUTH)
        assert answer.status_code == status, (source, answer.text)
    assert client.get("/metrics").text.count("tessera_import_files_total") >= 1


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "100.64.0.1",
    ],
)
def test_private_addresses_need_an_entry_naming_them(address: str) -> None:
    allow = AllowList(
        ["https://data.example.org/", f"http://{address if ':' not in address else f'[{address}]'}/"]
    )
    named = allow.url_entry("https://data.example.org/file")
    with pytest.raises(SourceRefused):
        check_address(named, ipaddress.ip_address(address))  # a name resolving there: refused
    literal = allow.urls[1]
    if not address.startswith("::ffff:"):
        check_address(literal, ipaddress.ip_address(address))  # the entry names the address itself
    check_address(named, ipaddress.ip_address("93.184.216.34"))  # a public address is fine


def test_allow_list_boundaries() -> None:
    allow = AllowList(["https://data.example.org/pub", "s3://bucket/in/"])
    assert allow.url_entry("https://data.example.org/pub/a").host == "data.example.org"
    for refused in (
        "https://data.example.org/public",
        "https://data.example.org.evil.net/pub/a",
        "http://data.example.org/pub/a",
        "https://data.example.org:8443/pub/a",
    ):
        with pytest.raises(SourceRefused):
            allow.url_entry(refused)
    with pytest.raises(InvalidSource):  # credentials in a URL would end up in logs and job records
        allow.url_entry("https://user:secret@data.example.org/pub/a")
    assert allow.s3_source("s3://bucket/in/x") == ("bucket", "in/x")
    with pytest.raises(SourceRefused):
        allow.s3_source("s3://bucket/inside")

"""The files API's write side against a real ``tessera serve``: uploads, deletes and listings on a
local folder and on moto S3 (through a counting proxy that can fail requests), plus the HTTP mount
(read-only) and a mount that needs a read token."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.moto_server import MotoServer
from tests.support.origin_server import ObjectHTTPServer
from tests.support.proxy import CountingProxy
from tests.support.tessera_server import tessera_server, write_config

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024
PART = 5 * MiB
MAX_UPLOAD = 40 * MiB
PREFIX = "pre"


@dataclass
class Server:
    base: str
    local: Path
    private: Path
    bucket: str
    moto: MotoServer
    proxy: CountingProxy
    web: ObjectHTTPServer

    def url(self, path: str) -> str:
        return f"{self.base}/api/v1/files/{path}"

    def s3_keys(self) -> list[str]:
        listed = self.moto.client().list_objects_v2(Bucket=self.bucket, Prefix=f"{PREFIX}/")
        return [item["Key"] for item in listed.get("Contents", [])]

    def multipart_uploads(self) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = (
            self.moto.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        )
        return uploads


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("writes")
    local, private = tmp / "local", tmp / "private"
    local.mkdir()
    private.mkdir()
    (private / "secret.txt").write_bytes(b"classified")
    bucket = f"w-{uuid.uuid4().hex[:12]}"
    moto.make_bucket(bucket)
    with ObjectHTTPServer() as web, CountingProxy(moto.endpoint) as proxy:
        web.put("page.html", b"<p>hi</p>")
        config, port = write_config(
            tmp,
            f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
block_size = "256KB"
metadata_ttl = "1h"
[origin]
retries = 0
[storage]
max_upload_size = "{MAX_UPLOAD}"
part_size = "{PART}"
upload_concurrency = 2
[mounts.local]
origin = "file://{local}"
[mounts.private]
origin = "file://{private}"
public = false
[mounts.s3]
origin = "s3://{bucket}/{PREFIX}"
endpoint_url = "{proxy.url.rstrip("/")}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
[mounts.web]
origin = "{web.url}"
""",
            server=f'access_log = false\ntoken = "{TOKEN}"',
        )
        with tessera_server(config, port, tmp / "serve.log") as base:
            yield Server(base, local, private, bucket, moto, proxy, web)


@pytest.fixture(params=["local", "s3"])
def mount(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def assert_clean(server: Server, mount: str) -> None:
    """No temporary file in the local folder, no multipart upload left in the bucket."""
    if mount == "local":
        assert leftovers(server.local) == []
    else:
        left = server.multipart_uploads()
        assert left == [], [(r.method, r.key, r.query, r.status) for r in server.proxy.log.select()][-20:]


def test_round_trip_put_get_list_delete(server: Server, mount: str) -> None:
    data = os.urandom(300_000)
    put = httpx.put(server.url(f"{mount}/rt/a.bin"), content=data, headers=AUTH)
    assert put.status_code == 201, put.text
    body = put.json()
    assert body == {
        "path": f"/{mount}/rt/a.bin",
        "size": len(data),
        "etag": put.headers["etag"],
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert put.headers["location"] == f"{server.base}/api/v1/files/{mount}/rt/a.bin"
    got = httpx.get(server.url(f"{mount}/rt/a.bin"))
    assert got.status_code == 200 and got.content == data and got.headers["etag"] == body["etag"]
    listed = httpx.get(f"{server.base}/api/v1/list/{mount}/rt/").json()
    assert [item["path"] for item in listed["items"]] == [f"/{mount}/rt/a.bin"]
    assert listed["items"][0]["size"] == len(data) and listed["next"] is None
    assert httpx.delete(server.url(f"{mount}/rt/a.bin"), headers=AUTH).status_code == 204
    assert httpx.get(server.url(f"{mount}/rt/a.bin")).status_code == 404
    assert httpx.delete(server.url(f"{mount}/rt/a.bin"), headers=AUTH).status_code == 204  # idempotent
    assert_clean(server, mount)


def test_a_write_is_seen_at_once_despite_a_long_metadata_ttl(server: Server, mount: str) -> None:
    url = server.url(f"{mount}/coherent.txt")
    assert httpx.put(url, content=b"first version", headers=AUTH).status_code == 201
    assert httpx.get(url).content == b"first version"  # cached, trusted for an hour
    assert httpx.put(url, content=b"second", headers=AUTH).status_code == 201
    again = httpx.get(url)
    assert again.content == b"second" and again.headers["content-length"] == "6"


def chunked(data: bytes, piece: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def test_chunked_multipart_upload(server: Server, mount: str) -> None:
    """A chunked body of several parts: S3 takes it as a multipart upload, never all in memory."""
    data = os.urandom(3 * PART + 12345)
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    headers = {**AUTH, "x-amz-checksum-sha256": digest}
    url = server.url(f"{mount}/big/chunked.bin")
    put = httpx.put(url, content=chunked(data), headers=headers, timeout=60)
    assert put.status_code == 201, put.text
    assert put.json()["size"] == len(data)
    assert httpx.get(server.url(f"{mount}/big/chunked.bin"), timeout=60).content == data
    if mount == "s3":
        records = server.proxy.log.select("PUT", key=f"{server.bucket}/{PREFIX}/big/chunked.bin")
        assert len([r for r in records if "partNumber" in r.query]) == 4  # 3 whole parts and the tail
    assert_clean(server, mount)


def test_too_large_by_content_length_is_refused_before_the_body(server: Server, mount: str) -> None:
    with socket.create_connection(("127.0.0.1", int(server.base.rsplit(":", 1)[1])), timeout=10) as sock:
        head = (
            f"PUT /api/v1/files/{mount}/huge.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {MAX_UPLOAD + 1}\r\n\r\n"
        )
        sock.sendall(head.encode())  # and no body at all: the answer must come anyway
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert httpx.get(server.url(f"{mount}/huge.bin")).status_code == 404


def test_too_large_chunked_stops_at_the_limit(server: Server, mount: str) -> None:
    data = b"x" * (MAX_UPLOAD + MiB)
    put = httpx.put(server.url(f"{mount}/huge2.bin"), content=chunked(data, MiB), headers=AUTH, timeout=60)
    assert put.status_code == 413, put.text
    assert httpx.get(server.url(f"{mount}/huge2.bin")).status_code == 404
    assert_clean(server, mount)


def test_checksum_mismatch_stores_nothing(server: Server, mount: str) -> None:
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    headers = {**AUTH, "Content-MD5": wrong_md5}
    put = httpx.put(server.url(f"{mount}/sum.bin"), content=b"data", headers=headers)
    assert put.status_code == 400 and put.json()["error"] == "ChecksumMismatch"
    big = os.urandom(PART + 1000)  # a multipart upload on S3, aborted at the end
    wrong_sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    headers = {**AUTH, "x-amz-checksum-sha256": wrong_sha}
    put = httpx.put(server.url(f"{mount}/sum.bin"), content=chunked(big), headers=headers, timeout=60)
    assert put.status_code == 400 and put.json()["error"] == "ChecksumMismatch"
    assert httpx.get(server.url(f"{mount}/sum.bin")).status_code == 404
    assert_clean(server, mount)
    right = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    put = httpx.put(server.url(f"{mount}/sum.bin"), content=b"data", headers={**AUTH, "Content-MD5": right})
    assert put.status_code == 201


@pytest.mark.parametrize("size", [100, PART + 100])
def test_create_only(server: Server, mount: str, size: int) -> None:
    url = server.url(f"{mount}/once-{size}.bin")
    headers = {**AUTH, "If-None-Match": "*"}
    first = os.urandom(size)
    assert httpx.put(url, content=first, headers=headers, timeout=60).status_code == 201
    again = httpx.put(url, content=os.urandom(size), headers=headers, timeout=60)
    assert again.status_code == 412 and again.json()["error"] == "ObjectExists"
    assert httpx.get(url, timeout=60).content == first
    assert_clean(server, mount)


def test_http_mount_is_read_only(server: Server) -> None:
    put = httpx.put(server.url("web/page.html"), content=b"x", headers=AUTH)
    assert put.status_code == 405 and "read-only" in put.json()["detail"]
    assert httpx.delete(server.url("web/page.html"), headers=AUTH).status_code == 405
    assert httpx.get(server.url("web/page.html")).content == b"<p>hi</p>"
    assert httpx.get(f"{server.base}/api/v1/list/web/").status_code == 400


def test_tokens(server: Server) -> None:
    assert httpx.put(server.url("local/t.txt"), content=b"x").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.put(server.url("local/t.txt"), content=b"x", headers=wrong).status_code == 401
    assert httpx.delete(server.url("local/t.txt")).status_code == 401
    assert not (server.local / "t.txt").exists()
    assert httpx.get(server.url("private/secret.txt")).status_code == 401
    assert httpx.get(f"{server.base}/api/v1/list/private/").status_code == 401
    assert httpx.get(server.url("private/secret.txt"), headers=AUTH).content == b"classified"
    listed = httpx.get(f"{server.base}/api/v1/list/private/", headers=AUTH).json()
    assert [item["path"] for item in listed["items"]] == ["/private/secret.txt"]


@pytest.mark.parametrize(
    "path",
    [
        "local/a/%2E%2E/%2E%2E/escape.txt",
        "local/a/../../escape.txt",
        "local/a//b.txt",
        "local/back%5Cslash.txt",
        "local/nul%00.txt",
        "local/" + "n" * 256,
        "local/" + "/".join(["d" * 200] * 6),
    ],
)
def test_bad_paths(server: Server, path: str) -> None:
    put = httpx.put(f"{server.base}/api/v1/files/{path}", content=b"x", headers=AUTH)
    assert put.status_code in (400, 404), put.text  # 404: the client collapsed the dots itself
    assert not (server.local.parent / "escape.txt").exists()


def test_a_name_the_folder_cannot_hold(server: Server) -> None:
    assert httpx.put(server.url("local/plain.txt"), content=b"x", headers=AUTH).status_code == 201
    under_a_file = httpx.put(server.url("local/plain.txt/inside"), content=b"y", headers=AUTH)
    assert under_a_file.status_code == 400, under_a_file.text
    assert httpx.put(server.url("local/folder/x"), content=b"x", headers=AUTH).status_code == 201
    over_a_folder = httpx.put(server.url("local/folder"), content=b"y", headers=AUTH)
    assert over_a_folder.status_code == 400, over_a_folder.text


def test_client_disconnect_mid_upload_leaves_nothing(server: Server, mount: str) -> None:
    port = int(server.base.rsplit(":", 1)[1])
    sent = 2 * PART + MiB  # on S3, two parts went out before the client vanished
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"PUT /api/v1/files/{mount}/gone.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {3 * PART}\r\n\r\n"
        )
        sock.sendall(head.encode())
        for piece in chunked(b"z" * sent, MiB):
            sock.sendall(piece)
        time.sleep(1)
    deadline = time.monotonic() + 15
    while True:  # the server notices, aborts the multipart upload / removes the temporary file
        try:
            assert_clean(server, mount)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert httpx.get(server.url(f"{mount}/gone.bin")).status_code == 404
    if mount == "s3":
        assert f"{PREFIX}/gone.bin" not in server.s3_keys()


def test_origin_failure_mid_upload_is_a_502_and_leaves_nothing(server: Server) -> None:
    """S3 fails the requests of a multipart upload, retries included (the proxy answers 500)."""

    def body() -> Iterator[bytes]:
        for index, piece in enumerate(chunked(os.urandom(3 * PART), MiB)):
            if index == PART // MiB + 1:  # the first part is on its way: the next request fails
                server.proxy.faults.fail_next(20, status=500)  # past obstore's 3 retries of a write
            yield piece

    server.proxy.fail_writes = True
    try:
        put = httpx.put(server.url("s3/failing.bin"), content=body(), headers=AUTH, timeout=60)
    finally:
        server.proxy.fail_writes = False
        server.proxy.faults.clear()
    assert put.status_code == 502, put.text
    assert "s3" in put.json()["detail"] and server.proxy.url not in put.text
    assert httpx.get(server.url("s3/failing.bin")).status_code == 404
    assert server.multipart_uploads() == []


def test_a_thousand_concurrent_small_uploads(server: Server, mount: str) -> None:
    payloads = {f"{mount}/many/{i:04d}.txt": f"object {i} ".encode() * (i % 7 + 1) for i in range(1000)}
    limits = httpx.Limits(max_connections=50)
    with httpx.Client(headers=AUTH, limits=limits, timeout=60) as client:

        def put(path: str) -> int:
            return client.put(server.url(path), content=payloads[path]).status_code

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(put, payloads))
    assert statuses == [201] * 1000
    seen: dict[str, int] = {}
    cursor = None
    while True:
        params = {"limit": "300", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{server.base}/api/v1/list/{mount}/many/", params=params).json()
        seen.update((item["path"], item["size"]) for item in page["items"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == {f"/{path}": len(data) for path, data in payloads.items()}
    for path in list(payloads)[::97]:
        assert httpx.get(server.url(path)).content == payloads[path]


def make_tree(server: Server, mount: str) -> set[str]:
    """1,707 keys: ``tree/dNN/fNNN`` (20 folders of 25), ``tree/big/…`` (1,200, one sub-prefix to
    skip past), and files directly in ``tree/``."""
    keys = {f"tree/d{d:02d}/f{f:03d}" for d in range(20) for f in range(25)}
    keys |= {f"tree/big/x{f:04d}" for f in range(1200)}
    keys |= {f"tree/top{f}.txt" for f in range(5)} | {"tree/d05-file", "tree/zz"}
    if mount == "local":
        for key in keys:
            (server.local / key).parent.mkdir(parents=True, exist_ok=True)
            (server.local / key).write_bytes(key.encode())
    else:
        client = server.moto.client()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(
                pool.map(lambda k: client.put_object(Bucket=server.bucket, Key=f"{PREFIX}/{k}", Body=k), keys)
            )
    return keys


def walk(server: Server, prefix: str, limit: int, delimiter: bool) -> tuple[list[str], list[str], int]:
    items: list[str] = []
    prefixes: list[str] = []
    pages = 0
    cursor = None
    while True:
        params = {"limit": str(limit)}
        if delimiter:
            params["delimiter"] = "/"
        if cursor:
            params["cursor"] = cursor
        response = httpx.get(f"{server.base}/api/v1/list/{prefix}", params=params, timeout=60)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) + len(page["prefixes"]) <= limit
        items += [item["path"] for item in page["items"]]
        prefixes += page["prefixes"]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            return items, prefixes, pages


def test_listing_pages_with_delimiter_and_cursor(server: Server, mount: str) -> None:
    keys = make_tree(server, mount)
    items, prefixes, pages = walk(server, f"{mount}/tree/", 7, delimiter=True)
    assert items == sorted(f"/{mount}/{k}" for k in keys if k.count("/") == 1)
    assert prefixes == [f"/{mount}/tree/big/"] + [f"/{mount}/tree/d{d:02d}/" for d in range(20)]
    assert pages == 4  # 28 entries, 7 a page
    everything, none, pages = walk(server, f"{mount}/tree/", 1000, delimiter=False)
    assert everything == sorted(f"/{mount}/{k}" for k in keys) and none == [] and pages == 2
    partial, sub, _ = walk(server, f"{mount}/tree/d0", 1000, delimiter=True)
    assert partial == [f"/{mount}/tree/d05-file"] and sub == [f"/{mount}/tree/d{d:02d}/" for d in range(10)]
    if mount == "s3":  # paging after the 1,200 keys of tree/big/ started a listing after them
        lists = server.proxy.log.select("GET", key=server.bucket)
        assert any("start-after" in r.query for r in lists)


def test_bad_listing_requests(server: Server) -> None:
    base = f"{server.base}/api/v1/list/local/"
    assert httpx.get(base, params={"cursor": "!!!"}).status_code == 400
    other = base64.urlsafe_b64encode(b"elsewhere/x").decode()
    assert httpx.get(base + "sub/", params={"cursor": other}).status_code == 400
    assert httpx.get(base, params={"limit": "0"}).status_code == 400
    assert httpx.get(base, params={"limit": "1001"}).status_code == 400
    assert httpx.get(base, params={"delimiter": ","}).status_code == 400
    assert httpx.get(f"{server.base}/api/v1/list/nomount/").status_code == 404
    mounts = httpx.get(f"{server.base}/api/v1/list/", params={"delimiter": "/"}).json()
    assert mounts["prefixes"] == ["/local/", "/private/", "/s3/", "/web/"]


def test_openapi_documents_the_write_routes(server: Server) -> None:
    schema = httpx.get(f"{server.base}/openapi.json").json()
    files = schema["paths"]["/api/v1/files/{path}"]
    put = files["put"]
    assert put["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert {"201", "400", "401", "405", "412", "413", "502"} <= set(put["responses"])
    assert {"204", "401", "405"} <= set(files["delete"]["responses"])
    listing = schema["paths"]["/api/v1/list/{prefix}"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"prefix", "delimiter", "limit", "cursor"}
    assert "Listing" in schema["components"]["schemas"]

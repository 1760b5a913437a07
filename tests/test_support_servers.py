"""Checks that the local test servers in tests/support behave as documented."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.moto_server import MotoServer
from tests.support.origin_server import ObjectHTTPServer, make_etag, parse_range
from tests.support.proxy import CountingProxy

DATA = bytes(range(256)) * 1024  # 256 KiB
KEY = "dir/sub dir/obj.bin"


@pytest.fixture
def origin() -> Iterator[ObjectHTTPServer]:
    with ObjectHTTPServer() as server:
        server.put(KEY, DATA)
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    """A bucket on the session's moto server (the ``moto`` fixture lives in tests/conftest.py)."""
    name = "tessera-support-test"
    moto.make_bucket(name)
    return name


# -- ObjectHTTPServer: protocol -----------------------------------------------------------------------


def test_get_and_head_full_object(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    assert "%20" in url and url.startswith(origin.url) and origin.url.endswith("/")
    r = client.get(url)
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["etag"] == make_etag(DATA) == origin.etag(KEY)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "application/octet-stream"
    assert "GMT" in r.headers["last-modified"]
    h = client.head(url)
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == str(len(DATA))
    assert client.get(origin.url + "missing").status_code == 404
    assert client.head(origin.url + "missing").status_code == 404


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, len(DATA) - 1),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=5-999999999", 5, len(DATA) - 1),
        ("bytes=-999999999", 0, len(DATA) - 1),
    ],
)
def test_range_206(
    origin: ObjectHTTPServer, client: httpx.Client, header: str, first: int, last: int
) -> None:
    r = client.get(origin.object_url(KEY), headers={"Range": header})
    assert r.status_code == 206
    assert r.content == DATA[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert r.headers["content-length"] == str(last - first + 1)


def test_range_416_and_ignored(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    for header in (f"bytes={len(DATA)}-", "bytes=-0"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(DATA)}"
    for header in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=x-"):
        assert client.get(url, headers={"Range": header}).status_code == 200
    # If-Range with a stale validator: full object.
    r = client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == len(DATA)
    r = client.get(url, headers={"Range": "bytes=0-1", "If-Range": origin.etag(KEY)})
    assert r.status_code == 206
    assert parse_range("bytes=0-0", 0) == "unsatisfiable"


def test_empty_object_and_other_methods(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    origin.put("empty", b"")
    r = client.get(origin.url + "empty")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    assert client.get(origin.url + "empty", headers={"Range": "bytes=0-"}).status_code == 416
    assert client.put(origin.url + "empty", content=b"x").status_code == 405
    assert origin.keys() == ["dir/sub dir/obj.bin", "empty"]


def test_conditionals(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    etag = origin.etag(KEY)
    assert client.get(url, headers={"If-Match": '"nope"'}).status_code == 412
    assert client.get(url, headers={"If-Match": f'"nope", {etag}'}).status_code == 200
    assert client.get(url, headers={"If-Match": "*"}).status_code == 200
    assert client.get(url, headers={"If-Match": "W/" + etag}).status_code == 412
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": "W/" + etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    # A new version changes the ETag; delete gives 404.
    new_etag = origin.put(KEY, b"v2")
    assert new_etag != etag
    assert client.get(url, headers={"If-Match": etag}).status_code == 412
    assert client.get(url).content == b"v2"
    origin.delete(KEY)
    assert client.get(url).status_code == 404


def test_request_log(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    client.get(origin.object_url(KEY), headers={"Range": "bytes=0-99"})
    client.head(origin.object_url(KEY))
    client.get(origin.url + "other")
    gets = origin.requests("GET", KEY)
    assert len(gets) == 1
    assert (gets[0].range, gets[0].status, gets[0].bytes_sent) == ("bytes=0-99", 206, 100)
    assert gets[0].path == "/dir/sub%20dir/obj.bin"
    assert [r.method for r in origin.requests(key=KEY)] == ["GET", "HEAD"]
    assert origin.bytes_sent(KEY) == 100
    assert origin.requests("get", "other")[0].status == 404
    origin.reset_log()
    assert origin.requests() == [] and origin.bytes_sent() == 0


def test_keep_alive_and_many_concurrent_clients(origin: ObjectHTTPServer) -> None:
    def fetch(i: int) -> int:
        conn = http.client.HTTPConnection(origin.host, origin.port, timeout=10)
        try:
            total = 0
            for _ in range(2):  # two requests on one keep-alive connection
                conn.request("GET", "/dir/sub%20dir/obj.bin", headers={"Range": f"bytes={i}-{i + 999}"})
                resp = conn.getresponse()
                assert resp.status == 206
                total += len(resp.read())
            return total
        finally:
            conn.close()

    with ThreadPoolExecutor(200) as pool:
        assert sum(pool.map(fetch, range(200))) == 200 * 2 * 1000
    assert len(origin.requests("GET")) == 400


def test_stop_closes_everything() -> None:
    server = ObjectHTTPServer().start()
    server.put("k", b"v")
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    conn.request("GET", "/k")
    assert conn.getresponse().read() == b"v"
    server.stop()
    server.stop()  # idempotent
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/k")
        conn.getresponse()
    conn.close()


# -- ObjectHTTPServer: faults -------------------------------------------------------------------------


def test_fail_next(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    origin.fail_next(2)
    origin.fail_next(1, status=500)
    r = client.get(url)
    assert r.status_code == 503 and b"injected" in r.content
    assert client.head(url).status_code == 503
    assert client.get(url).status_code == 500
    assert client.get(url).status_code == 200
    assert [r.fault for r in origin.requests()] == ["fail", "fail", "fail", None]


def test_delay_and_stall(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    origin.delay = 0.2
    t0 = time.monotonic()
    assert client.get(url).status_code == 200
    assert time.monotonic() - t0 >= 0.2
    origin.delay = 0
    origin.stall_after(1000, 0.3)
    with client.stream("GET", url) as r:
        t0 = time.monotonic()
        got = b"".join(r.iter_bytes())
        elapsed = time.monotonic() - t0
    assert got == DATA and elapsed >= 0.25
    assert origin.requests()[-1].fault == "stall"
    # A client with a short read timeout notices the stall.
    origin.stall_after(10, 1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=httpx.Timeout(5, read=0.2))


def test_reset_after(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    origin.reset_after(1000, count=2)
    for _ in range(2):
        got = 0
        with pytest.raises(httpx.ReadError), client.stream("GET", url) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                got += len(chunk)
        assert got == 1000
    # http.client surfaces it as ConnectionResetError.
    origin.reset_after(10)
    conn = http.client.HTTPConnection(origin.host, origin.port, timeout=5)
    conn.request("GET", "/dir/sub%20dir/obj.bin")
    with pytest.raises(ConnectionResetError):
        conn.getresponse().read()
    conn.close()
    assert client.get(url).content == DATA  # faults used up
    assert [(r.fault, r.bytes_sent) for r in origin.requests()] == [
        ("reset", 1000),
        ("reset", 1000),
        ("reset", 10),
        (None, len(DATA)),
    ]


def test_short_body(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    url = origin.object_url(KEY)
    origin.short_body()
    client.head(url)  # HEAD does not consume body faults
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        client.get(url)
    assert origin.requests("GET")[-1].bytes_sent == len(DATA) // 2
    origin.short_body(nbytes=7)
    conn = http.client.HTTPConnection(origin.host, origin.port, timeout=5)
    conn.request("GET", "/dir/sub%20dir/obj.bin")
    with pytest.raises(http.client.IncompleteRead) as info:
        conn.getresponse().read()
    assert len(info.value.partial) == 7
    conn.close()
    origin.clear_faults()
    assert client.get(url).content == DATA


# -- CountingProxy ------------------------------------------------------------------------------------


def test_proxy_in_front_of_origin(origin: ObjectHTTPServer, client: httpx.Client) -> None:
    with CountingProxy(origin.url) as proxy:
        url = proxy.url + "dir/sub%20dir/obj.bin?x=1"
        r = client.get(url, headers={"Range": "bytes=5-9"})
        assert r.status_code == 206 and r.content == DATA[5:10]
        assert r.headers["content-range"] == f"bytes 5-9/{len(DATA)}"
        assert client.get(url, headers={"If-None-Match": origin.etag(KEY)}).status_code == 304
        assert client.head(url).headers["content-length"] == str(len(DATA))
        assert client.get(proxy.url + "missing").status_code == 404
        rec = proxy.requests("GET", KEY)[0]
        assert (rec.query, rec.range, rec.status, rec.bytes_sent) == ("x=1", "bytes=5-9", 206, 5)
        assert proxy.bytes_sent(KEY) == 5
        # Faults apply to GET only.
        proxy.fail_next(1, 502)
        assert client.head(url).status_code == 200
        assert client.get(url).status_code == 502
        proxy.short_body()
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(url)
        assert client.get(url).content == DATA
    assert len(origin.requests("GET")) == 5  # the injected 502 never reached the origin


def test_proxy_counts_s3_range_get(moto: MotoServer, bucket: str) -> None:
    with CountingProxy(moto.endpoint) as proxy:
        s3 = moto.client(endpoint_url=proxy.endpoint)
        s3.put_object(Bucket=bucket, Key="a/b.bin", Body=DATA)
        proxy.reset_log()
        obj = s3.get_object(Bucket=bucket, Key="a/b.bin", Range="bytes=100-199")
        assert obj["Body"].read() == DATA[100:200]
        assert obj["ContentRange"] == f"bytes 100-199/{len(DATA)}"
        (rec,) = proxy.requests("GET", f"{bucket}/a/b.bin")
        assert (rec.range, rec.status, rec.bytes_sent) == ("bytes=100-199", 206, 100)
        assert proxy.bytes_sent() == 100


def test_proxy_reset_visible_to_s3_client(moto: MotoServer, bucket: str) -> None:
    with CountingProxy(moto.endpoint) as proxy:
        s3 = moto.client(endpoint_url=proxy.endpoint, retries={"max_attempts": 1})
        s3.put_object(Bucket=bucket, Key="reset.bin", Body=DATA)
        proxy.reset_after(4096)
        body = s3.get_object(Bucket=bucket, Key="reset.bin")["Body"]
        with pytest.raises(Exception, match="reset"):
            body.read()
        assert proxy.requests("GET")[-1].fault == "reset"
        assert proxy.requests("GET")[-1].bytes_sent == 4096
        # The proxy keeps working afterwards.
        assert s3.get_object(Bucket=bucket, Key="reset.bin")["Body"].read() == DATA

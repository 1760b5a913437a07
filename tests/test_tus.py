"""tus 1.0 uploads at /api/v1/uploads/ against a real ``tessera serve``: the tuspy client into a local
folder and into moto S3, resumption after cut connections and after SIGKILL of the server, and every
refusal the protocol and the write side define."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError

from tessera.remote.client import RemoteClient
from tessera.storage.uploads import StagingFull, UploadBusy, UploadStore
from tessera.tokens import new_token
from tests.support.cutting_proxy import CuttingProxy
from tests.support.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.support.tessera_server import tessera_process, write_config

TOKEN = "tus-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1024 * 1024
MiB = 1024 * 1024


def configure(tmp_path: Path, storage: str = "", mounts: str = "") -> tuple[Path, int]:
    """A config with the mount ``/local`` (the folder ``tmp_path/files``), ``mounts`` and the
    ``[storage]`` lines ``storage``; returns it and its port."""
    (tmp_path / "files").mkdir(exist_ok=True)
    sections = f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[storage]
{storage}
[mounts.local]
origin = "file://{tmp_path / "files"}"
{mounts}
"""
    return write_config(tmp_path, sections, server=f'access_log = false\ntoken = "{TOKEN}"')


@contextmanager
def serve(
    tmp_path: Path, storage: str = "", mounts: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``tessera serve`` on ``configure``'s config."""
    config, port = configure(tmp_path, storage, mounts)
    with tessera_process(config, port, tmp_path / "serve.log") as running:
        yield running


def payload(size: int, seed: int = 1) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def metadata(path: str, **more: str) -> str:
    values = {"path": path, **more}
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


def create(base: str, path: str, length: int, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {**TUS, **AUTH, "Upload-Length": str(length), "Upload-Metadata": metadata(path), **(headers or {})}
    return httpx.post(f"{base}/api/v1/uploads/", headers=sent)


def patch(url: str, offset: int, body: bytes, **headers: str) -> httpx.Response:
    sent = {**TUS, **AUTH, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    return httpx.patch(url, content=body, headers={**sent, **headers}, timeout=60)


def offset_of(url: str) -> int:
    response = httpx.head(url, headers={**TUS, **AUTH}, timeout=30)
    assert response.status_code == 200, response
    assert response.headers["Cache-Control"] == "no-store"
    return int(response.headers["Upload-Offset"])


def cut_patch(url: str, offset: int, declared: int, body: bytes) -> None:
    """A PATCH announcing ``declared`` bytes whose connection closes after ``body``."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)


def tus_upload(endpoint: str, source: Path, path: str, **options: object) -> str:
    """Upload ``source`` with tuspy; returns the upload URL."""
    client = TusClient(f"{endpoint}/api/v1/uploads/", headers=AUTH)
    uploader = client.uploader(file_path=str(source), metadata={"path": path}, retry_delay=0, **options)
    uploader.upload()
    return str(uploader.url)


def staged(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path / "cache" / "uploads"))


def test_tuspy_uploads_into_a_local_folder_with_checksums(tmp_path: Path) -> None:
    data = payload(3 * MiB + 12345)
    (tmp_path / "big.bin").write_bytes(data)
    with serve(tmp_path, 'max_upload_size = "10MB"') as (base, _):
        options = httpx.options(f"{base}/api/v1/uploads/")
        assert options.status_code == 204
        assert options.headers["Tus-Version"] == "1.0.0"
        assert set(options.headers["Tus-Extension"].split(",")) >= {"creation", "termination", "checksum"}
        assert options.headers["Tus-Max-Size"] == str(10 * MiB)
        assert set(options.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}

        # one PATCH of the whole file (over the 1 MiB cap of JSON bodies), then in checksummed chunks
        url = tus_upload(base, tmp_path / "big.bin", "/local/in/one.bin")
        url2 = tus_upload(
            base, tmp_path / "big.bin", "/local/in/two.bin", chunk_size=MiB, upload_checksum=True
        )
        assert (tmp_path / "files" / "in" / "one.bin").read_bytes() == data
        assert (tmp_path / "files" / "in" / "two.bin").read_bytes() == data
        assert httpx.get(f"{base}/api/v1/files/local/in/two.bin").content == data
        # a finished upload still answers HEAD with its full offset, and holds no bytes any more
        assert offset_of(url) == offset_of(url2) == len(data)
        assert all(
            os.path.getsize(tmp_path / "cache" / "uploads" / name) == 0
            for name in staged(tmp_path)
            if name.endswith(".data")
        )


def test_tuspy_uploads_into_s3_with_the_whole_file_checksum(tmp_path: Path, moto: MotoServer) -> None:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    moto.make_bucket(bucket)
    data = payload(9 * MiB + 7)
    (tmp_path / "big.bin").write_bytes(data)
    mount = f"""
[mounts.s3]
origin = "s3://{bucket}/pre"
endpoint_url = "{moto.endpoint}"
region = "{REGION}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
"""
    with serve(tmp_path, 'part_size = "5MB"', mount) as (base, _):
        tus_upload(base, tmp_path / "big.bin", "/s3/products/a.bin", chunk_size=4 * MiB)
        stored = moto.client().get_object(Bucket=bucket, Key="pre/products/a.bin")["Body"].read()
        assert stored == data
        assert httpx.get(f"{base}/api/v1/files/s3/products/a.bin").content == data

        # the sha256 metadata value is checked against the whole file: a wrong one stores nothing
        wrong = metadata("/s3/products/b.bin", sha256=hashlib.sha256(b"other").hexdigest())
        url = create(base, "", 5, {"Upload-Metadata": wrong}).headers["Location"]
        response = patch(url, 0, b"hello")
        assert response.status_code == 400 and response.json()["error"] == "ChecksumMismatch"
        assert httpx.head(url, headers={**TUS, **AUTH}).status_code == 404  # removed: it can never succeed
        assert httpx.get(f"{base}/api/v1/files/s3/products/b.bin").status_code == 404


def test_a_cut_patch_keeps_what_arrived_and_the_upload_resumes(tmp_path: Path) -> None:
    data = payload(16 * MiB)
    (tmp_path / "f.bin").write_bytes(data)
    with serve(tmp_path) as (base, _):
        url = create(base, "/local/cut.bin", len(data)).headers["Location"]
        cut_patch(url, 0, len(data), data[: 3 * MiB])
        durable = offset_of(url)
        assert 2 * MiB <= durable <= 3 * MiB  # at most what uvicorn buffered was lost with the socket
        assert not (tmp_path / "files" / "cut.bin").exists()
        client = TusClient(f"{base}/api/v1/uploads/", headers=AUTH)
        uploader = client.uploader(file_path=str(tmp_path / "f.bin"), url=url, retry_delay=0)
        assert uploader.offset == durable
        uploader.upload()
        assert (tmp_path / "files" / "cut.bin").read_bytes() == data

        # tuspy through a link that drops the connection every 4 MiB: it resumes each time, and the
        # bytes it sends stay close to the file's size (a cut loses only what uvicorn had buffered)
        with CuttingProxy(int(urlsplit(base).port or 0), cut_every=4 * MiB) as proxy:
            tus_upload(proxy.url, tmp_path / "f.bin", "/local/cuts.bin", retries=30)
        assert proxy.cuts >= 3
        assert (tmp_path / "files" / "cuts.bin").read_bytes() == data
        assert proxy.sent <= 1.05 * len(data)


def test_offsets_must_match_and_one_patch_at_a_time(tmp_path: Path) -> None:
    with serve(tmp_path) as (base, _):
        url = create(base, "/local/o.bin", 10 * MiB).headers["Location"]
        assert patch(url, 0, b"a" * 100).headers["Upload-Offset"] == "100"
        stale = patch(url, 0, b"b" * 100)
        assert stale.status_code == 409 and stale.headers["Upload-Offset"] == "100"
        assert patch(url, 250, b"c").status_code == 409
        assert offset_of(url) == 100
        # a PATCH whose body is still coming holds the upload: a second one is refused at once
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port)) as slow:
            head = (
                f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/offset+octet-stream\r\n"
                f"Upload-Offset: 100\r\nContent-Length: 1000\r\n\r\n"
            )
            slow.sendall(head.encode() + b"x" * 10)
            time.sleep(0.5)
            busy = patch(url, 100, b"y")
            assert busy.status_code == 409, busy.text
            slow.sendall(b"x" * 990)
            assert b"204 No Content" in slow.recv(4096)
        assert offset_of(url) == 1100
        # X-HTTP-Method-Override, for clients that can only POST
        override = {**TUS, **AUTH, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "1100"}
        overridden = httpx.post(
            url, content=b"w" * 50, headers={**override, "X-HTTP-Method-Override": "PATCH"}
        )
        assert overridden.status_code == 204 and overridden.headers["Upload-Offset"] == "1150"
        assert httpx.post(url, headers={**TUS, **AUTH}).status_code == 405
        # bodies beyond the announced length, wrong media type, unknown version
        assert patch(url, 1150, b"z" * (10 * MiB)).status_code == 413
        assert patch(url, 1150, b"z", **{"Content-Type": "application/json"}).status_code == 415
        old = patch(url, 1150, b"z", **{"Tus-Resumable": "0.2.2"})
        assert old.status_code == 412 and old.headers["Tus-Version"] == "1.0.0"
        assert httpx.head(url, headers=AUTH).status_code == 412
        assert offset_of(url) == 1150


def test_a_chunk_failing_its_checksum_is_discarded(tmp_path: Path) -> None:
    with serve(tmp_path) as (base, _):
        url = create(base, "/local/c.bin", 11).headers["Location"]
        good = base64.b64encode(hashlib.sha1(b"hello").digest()).decode()
        response = patch(url, 0, b"hellO", **{"Upload-Checksum": f"sha1 {good}"})
        assert response.status_code == 460
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert offset_of(url) == 0
        assert patch(url, 0, b"hello", **{"Upload-Checksum": "crc32 AAAA"}).status_code == 400
        assert patch(url, 0, b"hello", **{"Upload-Checksum": f"sha1 {good}"}).headers["Upload-Offset"] == "5"
        md5 = base64.b64encode(hashlib.md5(b" world").digest()).decode()
        assert patch(url, 5, b" world", **{"Upload-Checksum": f"md5 {md5}"}).status_code == 204
        assert (tmp_path / "files" / "c.bin").read_bytes() == b"hello world"


def test_termination_removes_the_staged_bytes(tmp_path: Path) -> None:
    with serve(tmp_path) as (base, _):
        sent = 3 * MIB // 2
        url = create(base, "/local/t.bin", 3 * MIB).headers["Location"]
        assert patch(url, 0, b"q" * sent).status_code == 204
        assert len(staged(tmp_path)) == 2
        # the bytes counted so far are on their way into the origin (a hidden temporary file), in
        # pieces of 1 MiB (the write path gathers the body before hashing it)
        deadline = time.monotonic() + 30
        while [p.stat().st_size >= MIB for p in (tmp_path / "files").glob(".t.bin.*.tmp")] != [True]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.delete(url, headers=TUS).status_code == 401
        response = httpx.post(url, headers={**TUS, **AUTH, "X-HTTP-Method-Override": "DELETE"})
        assert response.status_code == 204 and response.headers["Tus-Resumable"] == "1.0.0"
        assert staged(tmp_path) == []
        assert list((tmp_path / "files").iterdir()) == []  # the origin keeps nothing of it
        assert httpx.head(url, headers={**TUS, **AUTH}).status_code == 404
        assert patch(url, sent, b"q").status_code == 404
        assert httpx.delete(url, headers={**TUS, **AUTH}).status_code == 404
        assert not (tmp_path / "files" / "t.bin").exists()


def test_uploads_that_receive_nothing_expire(tmp_path: Path) -> None:
    with serve(tmp_path, 'upload_expiry = "1s"') as (base, _):
        created = create(base, "/local/e.bin", 1000)
        assert "Upload-Expires" in created.headers
        url = created.headers["Location"]
        assert patch(url, 0, b"e" * 10).status_code == 204
        deadline = time.monotonic() + 10
        while staged(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert staged(tmp_path) == []
        assert httpx.head(url, headers={**TUS, **AUTH}).status_code == 404
        deadline = time.monotonic() + 10
        while list((tmp_path / "files").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list((tmp_path / "files").iterdir()) == []


def test_creation_refusals(tmp_path: Path) -> None:
    with serve(tmp_path, 'max_upload_size = "10MB"\nstaging_size = "16MB"') as (base, _):
        assert create(base, "/local/big.bin", 10 * MiB + 1).status_code == 413
        assert create(base, "/local/../etc/passwd", 10).status_code == 400
        assert create(base, "/nowhere/x.bin", 10).status_code == 404
        no_path = create(base, "", 10, {"Upload-Metadata": "filename eC5iaW4="})
        assert no_path.status_code == 400 and "path" in no_path.json()["detail"]
        assert create(base, "/local/x.bin", 10, {"Upload-Metadata": "path %%%"}).status_code == 400
        assert create(base, "/local/x.bin", 10, {"Upload-Length": "-1"}).status_code == 400
        assert create(base, "/local/x.bin", 10, {"Authorization": "Bearer wrong"}).status_code == 401
        anonymous = httpx.post(
            f"{base}/api/v1/uploads/",
            headers={**TUS, "Upload-Length": "10", "Upload-Metadata": metadata("/local/x.bin")},
        )
        assert anonymous.status_code == 401 and anonymous.headers["Tus-Resumable"] == "1.0.0"
        assert create(base, "/local/x.bin", 10, {"Tus-Resumable": "2.0.0"}).status_code == 412
        # staging space: the lengths of unfinished uploads are reserved at creation
        first = create(base, "/local/s1.bin", 9 * MiB)
        assert first.status_code == 201
        full = create(base, "/local/s2.bin", 9 * MiB)
        assert full.status_code == 507
        assert httpx.delete(first.headers["Location"], headers={**TUS, **AUTH}).status_code == 204
        assert create(base, "/local/s2.bin", 9 * MiB).status_code == 201
        # an empty upload is complete at creation
        assert create(base, "/local/empty.bin", 0).status_code == 201
        assert (tmp_path / "files" / "empty.bin").read_bytes() == b""
        # later requests need a token too
        url = create(base, "/local/y.bin", 10).headers["Location"]
        assert httpx.head(url, headers=TUS).status_code == 401
        assert httpx.patch(url, content=b"x", headers={**TUS, "Upload-Offset": "0"}).status_code == 401


def test_a_failed_commit_keeps_the_bytes_and_an_empty_patch_retries_it(
    tmp_path: Path, moto: MotoServer
) -> None:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    moto.make_bucket(bucket)
    with CuttingProxy(moto.port) as link:
        mount = f"""
[mounts.s3]
origin = "s3://{bucket}"
endpoint_url = "{link.url}"
region = "{REGION}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
[origin]
retries = 1
backoff = "10ms"
"""
        with serve(tmp_path, "", mount) as (base, _):
            data = payload(100_000)
            url = create(base, "/s3/r.bin", len(data)).headers["Location"]
            link.refusing = True
            failed = patch(url, 0, data)
            assert failed.status_code in (502, 504), failed.text
            assert failed.headers["Upload-Offset"] == str(len(data))
            assert offset_of(url) == len(data)
            link.refusing = False
            assert patch(url, len(data), b"").status_code == 204
            assert moto.client().get_object(Bucket=bucket, Key="r.bin")["Body"].read() == data
            assert patch(url, len(data), b"").status_code == 204  # done: nothing more to do


def test_sigkill_mid_upload_then_resume_is_byte_identical(tmp_path: Path) -> None:
    data = payload(48 * MiB, seed=7)
    (tmp_path / "k.bin").write_bytes(data)
    config, port = configure(tmp_path)
    with tessera_process(config, port, tmp_path / "serve.log") as (base, process):
        url = create(base, "/local/k.bin", len(data)).headers["Location"]
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port))
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: 40 * MiB])
        deadline = time.monotonic() + 30
        while offset_of(url) < 32 * MiB:  # the PATCH is still open: HEAD tells what is durable so far
            assert time.monotonic() < deadline
        process.send_signal(signal.SIGKILL)
        process.wait()
        sock.close()
    with tessera_process(config, port, tmp_path / "serve2.log") as (base, _):
        durable = offset_of(url)
        assert 32 * MiB <= durable <= 40 * MiB
        client = TusClient(f"{base}/api/v1/uploads/", headers=AUTH)
        uploader = client.uploader(file_path=str(tmp_path / "k.bin"), url=url, retry_delay=0)
        assert uploader.offset == durable
        uploader.upload()
    assert (tmp_path / "files" / "k.bin").read_bytes() == data


def test_tuspy_reports_refusals(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    with serve(tmp_path) as (base, _), pytest.raises(TusCommunicationError) as refused:
        tus_upload(base, tmp_path / "f.bin", "/local/../../x")
    assert refused.value.status_code == 400


def test_the_store_never_counts_bytes_it_did_not_make_durable(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "up", staging_size=100, expiry=60)
    upload = store.create("/local/a.bin", 40, "", "owner")
    with pytest.raises(StagingFull):
        store.create("/local/b.bin", 61, "", "owner")
    taken = store.take(upload.id)
    assert taken is not None
    with taken:
        with pytest.raises(UploadBusy):
            store.take(upload.id)
        taken.write(b"a" * 10)
        taken.commit()
        taken.write(b"b" * 5)  # written, never counted: as if the process died here
    assert store.get(upload.id) is not None and store.get(upload.id).offset == 10  # type: ignore[union-attr]
    assert (tmp_path / "up" / f"{upload.id}.data").stat().st_size == 15
    taken = store.take(upload.id)  # the uncounted bytes are cut off before anything is appended
    assert taken is not None
    with taken:
        assert (tmp_path / "up" / f"{upload.id}.data").stat().st_size == 10
        taken.write(b"c" * 30)
        taken.commit()
        assert b"".join(taken.chunks()) == b"a" * 10 + b"c" * 30
        taken.finish()
    assert store.reserved() == 0  # a complete upload reserves nothing, its record stays until it expires
    assert store.get(upload.id).done  # type: ignore[union-attr]
    # a record that outlived its bytes (a disk that lost them) trusts the bytes
    other = store.create("/local/c.bin", 50, "", "owner")
    with store.take(other.id) as held:  # type: ignore[union-attr]
        held.write(b"d" * 20)
        held.commit()
    os.truncate(tmp_path / "up" / f"{other.id}.data", 12)
    with store.take(other.id) as held:  # type: ignore[union-attr]
        assert held.upload.offset == 12
    # malformed ids never reach the filesystem; expired uploads and orphans are swept
    assert store.get("../../etc/passwd") is None and store.take("../x") is None
    (tmp_path / "up" / "orphan.data").write_bytes(b"x")
    removed = store.sweep(now=time.time() + 3600)
    assert sorted(removed) == sorted([upload.id, other.id])
    assert os.listdir(tmp_path / "up") == []


def test_a_slow_body_outlives_the_header_deadline_and_a_stalled_one_keeps_what_came(tmp_path: Path) -> None:
    config, port = configure(tmp_path)
    config.write_text(
        config.read_text().replace("access_log = false", 'access_log = false\nheader_timeout = "1s"')
    )
    with tessera_process(config, port, tmp_path / "serve.log") as (base, _):
        url = create(base, "/local/slow.bin", 1000).headers["Location"]
        parts = urlsplit(url)
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/offset+octet-stream\r\n"
            "Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
        )
        with socket.create_connection((parts.hostname, parts.port)) as slow:
            slow.sendall(head.format(offset=0, length=500).encode())
            for _ in range(5):  # 2.5 s in all, never 1 s without a byte
                time.sleep(0.5)
                slow.sendall(b"s" * 100)
            assert b"204 No Content" in slow.recv(4096)
        with socket.create_connection((parts.hostname, parts.port)) as stalled:
            stalled.sendall(head.format(offset=500, length=500).encode() + b"t" * 10)
            stalled.settimeout(10)
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                assert stalled.recv(4096) == b""  # closed after 1 s without a byte ...
            assert time.monotonic() - started < 5
        assert offset_of(url) == 510  # ... and what came is kept


def test_scoped_tokens_write_only_their_prefixes(tmp_path: Path) -> None:
    scoped, scoped_hash = new_token()
    reader, reader_hash = new_token()
    tokens = (
        f'[tokens.incoming]\nhash = "{scoped_hash}"\nscopes = ["write"]\nprefixes = ["/local/incoming"]\n'
        f'[tokens.reader]\nhash = "{reader_hash}"\nscopes = ["read"]\n'
    )
    with serve(tmp_path, "", tokens) as (base, _):
        mine = {"Authorization": f"Bearer {scoped}"}
        assert create(base, "/local/elsewhere/x.bin", 10, mine).status_code == 403
        assert (
            create(base, "/local/incoming/x.bin", 10, {"Authorization": f"Bearer {reader}"}).status_code
            == 403
        )
        url = create(base, "/local/incoming/x.bin", 10, mine).headers["Location"]
        record = json.loads((tmp_path / "cache" / "uploads" / f"{url.rsplit('/', 1)[1]}.json").read_text())
        assert record["owner"] == "incoming" and record["path"] == "/local/incoming/x.bin"
        assert patch(url, 0, b"12345", Authorization=f"Bearer {reader}").status_code == 403
        assert patch(url, 0, b"12345", **mine).headers["Upload-Offset"] == "5"
        assert patch(url, 5, b"67890").status_code == 204  # any token that may write the path
        assert (tmp_path / "files" / "incoming" / "x.bin").read_bytes() == b"1234567890"


def test_the_remote_client_puts_large_files_through_tus_and_resumes(tmp_path: Path) -> None:
    data = payload(3 * MiB + 5)
    (tmp_path / "r.bin").write_bytes(data)

    class Stop(Exception):
        pass

    calls: list[int] = []

    def stop_after_two_chunks(moved: int) -> None:  # called with 0 first, then after each chunk
        calls.append(moved)
        if len(calls) == 3:
            raise Stop

    with serve(tmp_path) as (base, _), CuttingProxy(int(urlsplit(base).port or 0)) as proxy:
        options = {"tus_threshold": MiB, "chunk_size": MiB, "resume_file": tmp_path / "tus.json"}
        with RemoteClient(proxy.url, TOKEN, **options) as client, pytest.raises(Stop):  # type: ignore[arg-type]
            client.put(tmp_path / "r.bin", "/local/remote.bin", progress=stop_after_two_chunks)
        assert not (tmp_path / "files" / "remote.bin").exists()
        with RemoteClient(proxy.url, TOKEN, **options) as client:  # type: ignore[arg-type]
            stored = client.put(tmp_path / "r.bin", "/local/remote.bin")
        assert stored["size"] == len(data)
        assert (tmp_path / "files" / "remote.bin").read_bytes() == data
        assert proxy.sent < 1.05 * len(data)  # the second put went on from where the first stopped

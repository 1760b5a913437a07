"""The upload body reader (raw and streamed multipart, bounded) and the per-client rate limit."""

from __future__ import annotations

import os

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import InvalidPath, UploadTooLarge
from tessera.hosting.rate_limit import RateLimit
from tessera.web.upload_body import read_upload

LIMIT = 64 << 10


def reader_app() -> TestClient:
    app = FastAPI()

    @app.post("/up")
    async def up(request: Request) -> JSONResponse:
        try:
            data = await read_upload(request, LIMIT)
        except (InvalidPath, UploadTooLarge) as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse({"size": len(data), "head": data[:16].hex()})

    return TestClient(app)


def test_a_raw_body_and_a_form_file_field_give_the_same_bytes() -> None:
    client = reader_app()
    data = os.urandom(LIMIT)
    raw = client.post("/up", content=data)
    form = client.post("/up", files={"file": ("x.jpg", data, "image/jpeg")}, data={"title": "x" * 1000})
    assert raw.json() == form.json() == {"size": LIMIT, "head": data[:16].hex()}


def test_over_the_limit_is_413_raw_form_and_chunked() -> None:
    client = reader_app()
    data = os.urandom(LIMIT + 1)
    assert client.post("/up", content=data).status_code == 413
    assert client.post("/up", files={"file": ("x", data)}).status_code == 413

    def chunks():  # no Content-Length: the limit is counted as bytes arrive
        for _ in range(100):
            yield os.urandom(1024)

    assert client.post("/up", content=chunks()).status_code == 413


def test_malformed_forms_are_400_with_a_reason() -> None:
    client = reader_app()
    form = {"Content-Type": "multipart/form-data; boundary=xyz"}
    no_file = b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nhello\r\n--xyz--\r\n'
    answer = client.post("/up", content=no_file, headers=form)
    assert answer.status_code == 400 and "file" in answer.json()["error"]
    two = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\na\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nb\r\n--xyz--\r\n'
    )
    assert client.post("/up", content=two, headers=form).status_code == 400
    no_boundary = {"Content-Type": "multipart/form-data"}
    assert client.post("/up", content=b"x", headers=no_boundary).status_code == 400
    huge_header = b"--xyz\r\nX-" + b"a" * 100_000 + b": b\r\n\r\n"
    assert client.post("/up", content=huge_header, headers=form).status_code in (400, 413)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_form_body_is_read_or_refused_never_an_error(body: bytes) -> None:
    client = reader_app()
    answer = client.post(
        "/up", content=b"--b\r\n" + body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert answer.status_code in (200, 400, 413)


def test_the_rate_limit_refills_over_time_per_client() -> None:
    now = [0.0]
    limit = RateLimit(6, clock=lambda: now[0])  # 6 a minute: one every 10 s, a burst of 6
    assert [limit.take("a") for _ in range(6)] == [0.0] * 6
    wait = limit.take("a")
    assert wait == pytest.approx(10.0)
    assert limit.take("b") == 0.0  # another client is not held back
    now[0] += 10.0
    assert limit.take("a") == 0.0  # one more after 10 s
    assert limit.take("a") == pytest.approx(10.0)


def test_the_rate_limit_keeps_a_bounded_number_of_clients() -> None:
    limit = RateLimit(1, max_clients=100)
    for n in range(10_000):
        limit.take(f"client-{n}")
    assert len(limit._buckets) == 100

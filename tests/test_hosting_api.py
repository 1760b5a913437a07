"""Image hosting against a real ``tessera serve``: uploads (token, anonymous with a rate limit, every
hostile file of the corpus), views through the cache, derivatives by the job queue and on demand,
delete to 410, listing, and a crash (SIGKILL) with jobs pending that resume after the restart."""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips
from PIL import Image

from tests.support.bad_images import bad_corpus, good_corpus
from tests.support.postgres import postgres_server
from tests.support.tessera_server import tessera_process, tessera_server, write_config

TOKEN = "h0st-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WIDTHS = [1024, 800, 500]
EAGER = {f"{width}.{suffix}" for width in WIDTHS for suffix in ("jpg", "webp")}


def names(answer: dict[str, Any]) -> set[str]:
    """The file names of an image's listed derivatives."""
    return {url.rsplit("/", 1)[1] for url in answer["derivatives"]}


def photo(width: int = 1600, height: int = 1067, quality: int = 85) -> bytes:
    """A JPEG with detail (noise over a gradient), like a photo."""
    noise = pyvips.Image.gaussnoise(width, height, sigma=40, mean=128)
    gradient = pyvips.Image.xyz(width, height)[0] * (255 / width)
    image = ((noise + gradient) / 2).cast("uchar")
    return image.bandjoin([image.rot180().resize(1.0), image]).jpegsave_buffer(Q=quality)


@dataclass
class Hosting:
    base: str
    hosted: Path
    tmp: Path

    def upload(
        self, data: bytes, *, raw: bool = False, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {**AUTH, **(headers or {})}
        if raw:
            return httpx.post(f"{self.base}/api/v1/images", content=data, headers=headers, timeout=60)
        files = {"file": ("upload.bin", data, "application/octet-stream")}
        return httpx.post(f"{self.base}/api/v1/images", files=files, headers=headers, timeout=60)

    def stored(self) -> list[str]:
        return sorted(str(p.relative_to(self.hosted)) for p in self.hosted.rglob("*") if p.is_file())

    def wait_ready(self, link: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            answer = httpx.get(f"{self.base}/api/v1/images/{link}").json()
            if answer["status"] == "ready":
                return answer
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)


def hosting_config(tmp: Path, hosted: Path, extra: str = "", database: str | None = None) -> tuple[Path, int]:
    database = database or f"sqlite:///{tmp / 'hosting.sqlite'}"
    return write_config(
        tmp,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[hosting]
mount = "hosted"
database_url = "{database}"
max_upload_size = "8MB"
{extra}
[mounts.hosted]
origin = "file://{hosted}"
public = false
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )


@pytest.fixture(scope="module")
def hosting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosting]:
    tmp = tmp_path_factory.mktemp("hosting")
    hosted = tmp / "hosted"
    hosted.mkdir()
    config, port = hosting_config(tmp, hosted)
    with tessera_server(config, port, tmp / "serve.log") as base:
        yield Hosting(base, hosted, tmp)


def test_every_listed_derivative_of_a_narrow_image_answers(hosting: Hosting) -> None:
    """An image narrower than the configured widths: its derivatives are made at its own width, and
    the URLs listed are the configured widths' (the ones ``/i/{link}/{width}.{format}`` answers)."""
    answer = hosting.upload(photo(width=900, height=600))
    assert answer.status_code == 201, answer.text
    ready = hosting.wait_ready(answer.json()["link"])
    assert names(ready) == EAGER
    for url in ready["derivatives"]:
        view = httpx.get(url)
        assert view.status_code == 200, url
        assert pyvips.Image.new_from_buffer(view.content, "").width == min(
            900, int(url.rsplit("/", 1)[1].split(".")[0])
        )


def test_upload_answers_a_short_link_and_every_view_serves_the_image(hosting: Hosting) -> None:
    original = photo()
    answer = hosting.upload(original)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) >= {"link", "url", "status_url", "delete_token", "width", "height", "type", "status"}
    link = body["link"]
    assert len(link) <= 10 and link.isalnum()
    assert (body["width"], body["height"], body["type"]) == (1600, 1067, "jpeg")
    assert body["url"].endswith(f"/i/{link}") and answer.headers["location"] == body["url"]
    default = httpx.get(body["url"])
    assert default.status_code == 200
    assert default.headers["content-type"] == "image/jpeg"
    assert default.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert default.headers["vary"] == "Accept"
    etag = default.headers["etag"]
    assert etag.startswith('"')  # strong
    assert Image.open(io.BytesIO(default.content)).size[0] == 1024
    assert httpx.get(body["url"], headers={"If-None-Match": etag}).status_code == 304
    webp = httpx.get(body["url"], headers={"Accept": "image/webp,image/*"})
    assert webp.headers["content-type"] == "image/webp" and webp.content[8:12] == b"WEBP"
    for width in WIDTHS:
        jpeg = httpx.get(f"{body['url']}/{width}.jpg")
        assert jpeg.status_code == 200, jpeg.text
        assert Image.open(io.BytesIO(jpeg.content)).size == (width, round(1067 * width / 1600))
    assert httpx.get(f"{body['url']}/original").content == original
    for name in ("640.jpg", "1024.png", "1024", "x.jpg", "99999999.jpg"):
        assert httpx.get(f"{body['url']}/{name}").status_code == 404, name
    ready = hosting.wait_ready(link)
    assert {url.rsplit("/", 1)[1] for url in ready["derivatives"]} >= {
        f"{w}.{f}" for w in WIDTHS for f in ("jpg", "webp")
    }
    assert "delete_token" not in ready


def test_a_raw_body_upload_and_a_small_image_never_upscaled(hosting: Hosting) -> None:
    small = photo(300, 200)
    answer = hosting.upload(small, raw=True)
    assert answer.status_code == 201, answer.text
    url = answer.json()["url"]
    for width in WIDTHS:
        image = Image.open(io.BytesIO(httpx.get(f"{url}/{width}.jpg").content))
        assert image.size == (300, 200)


def test_uploads_need_a_token_unless_anonymous(hosting: Hosting) -> None:
    files = {"file": ("a.jpg", photo(64, 64), "image/jpeg")}
    assert httpx.post(f"{hosting.base}/api/v1/images", files=files).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{hosting.base}/api/v1/images", files=files, headers=wrong).status_code == 401


def test_every_hostile_upload_is_refused_with_a_reason_and_stores_nothing(hosting: Hosting) -> None:
    before = hosting.stored()
    for name, (data, status) in bad_corpus().items():
        answer = hosting.upload(data)
        assert answer.status_code == status, (name, answer.status_code, answer.text)
        assert answer.json()["error"], name
    assert hosting.stored() == before
    assert httpx.get(f"{hosting.base}/healthz").status_code == 200


def test_too_large_bodies_are_refused_before_they_are_read(hosting: Hosting) -> None:
    big = b"\xff\xd8\xff" + os.urandom(9 << 20)
    assert hosting.upload(big).status_code == 413
    assert hosting.upload(big, raw=True).status_code == 413
    assert hosting.upload(big, raw=True).json()["error"]


def test_the_good_corpus_is_accepted_upright_in_srgb_and_without_gps(hosting: Hosting) -> None:
    for name, data in good_corpus().items():
        answer = hosting.upload(data)
        assert answer.status_code in (200, 201), (name, answer.text)
        url = answer.json()["url"]
        view = httpx.get(f"{url}/500.jpg")
        assert view.status_code == 200, (name, view.text)
        image = Image.open(io.BytesIO(view.content))
        assert image.mode in ("RGB", "L"), name
        exif = image.getexif()
        assert 0x8825 not in exif, name  # GPS IFD pointer


def test_delete_with_the_token_makes_every_view_410_and_removes_the_files(hosting: Hosting) -> None:
    answer = hosting.upload(photo(900, 600)).json()
    link, url = answer["link"], answer["url"]
    assert httpx.get(f"{url}/800.webp").status_code == 200  # rendered on demand or by the job
    assert any(path.startswith(f"{link}/") for path in hosting.stored())
    anonymous = httpx.delete(f"{hosting.base}/api/v1/images/{link}")
    assert anonymous.status_code == 401
    wrong = httpx.delete(f"{hosting.base}/api/v1/images/{link}", headers={"X-Delete-Token": "guess"})
    assert wrong.status_code == 403
    deleted = httpx.delete(
        f"{hosting.base}/api/v1/images/{link}", headers={"X-Delete-Token": answer["delete_token"]}
    )
    assert deleted.status_code == 204
    for view in (url, f"{url}/original", f"{url}/500.jpg", f"{url}/800.webp", answer["status_url"]):
        gone = httpx.get(view)
        assert gone.status_code == 410, view
        assert gone.json()["error"]
    assert not [path for path in hosting.stored() if path.startswith(f"{link}/")]
    again = httpx.delete(
        f"{hosting.base}/api/v1/images/{link}", headers={"X-Delete-Token": answer["delete_token"]}
    )
    assert again.status_code == 410


def derive_jobs_ended(base: str) -> float:
    metrics = httpx.get(f"{base}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('tessera_jobs_total{kind="hosting.derive"') and 'state="queued"' not in line
    )


def test_a_delete_while_the_job_renders_stays_deleted(hosting: Hosting) -> None:
    """The derive job renders for a while; a delete meanwhile must win: the job's end neither brings
    the link back (views stay 410) nor leaves the files it stored after the delete."""
    ended = derive_jobs_ended(hosting.base)
    answer = hosting.upload(photo(3000, 2000)).json()
    link = answer["link"]
    time.sleep(0.2)  # the job has taken the row by then, and renders WebP for longer than that
    deleted = httpx.delete(answer["status_url"], headers={"X-Delete-Token": answer["delete_token"]})
    assert deleted.status_code == 204
    deadline = time.monotonic() + 30
    while derive_jobs_ended(hosting.base) <= ended:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for view in (answer["url"], f"{answer['url']}/500.jpg", f"{answer['url']}/800.webp"):
        assert httpx.get(view).status_code == 410, view
    assert not [path for path in hosting.stored() if path.startswith(f"{link}/")]


def test_the_owner_lists_and_deletes_with_their_token_and_duplicates_share_a_link(hosting: Hosting) -> None:
    data = photo(700, 500)
    first = hosting.upload(data)
    second = hosting.upload(data)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["link"] == second.json()["link"]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"mine": "", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = httpx.get(f"{hosting.base}/api/v1/images", params=params, headers=AUTH)
        assert page.status_code == 200, page.text
        seen += [item["link"] for item in page.json()["items"]]
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert first.json()["link"] in seen and len(seen) == len(set(seen))
    assert httpx.get(f"{hosting.base}/api/v1/images", params={"mine": ""}).status_code == 401
    link = first.json()["link"]
    assert httpx.delete(f"{hosting.base}/api/v1/images/{link}", headers=AUTH).status_code == 204
    assert httpx.get(f"{hosting.base}/i/{link}").status_code == 410


def test_unknown_and_malformed_links_are_404(hosting: Hosting) -> None:
    for link in ("AAAAAAAA", "zzzzzzzz", "x", "a" * 200, "..%2F..%2Fetc"):
        assert httpx.get(f"{hosting.base}/i/{link}").status_code == 404, link
        assert httpx.get(f"{hosting.base}/api/v1/images/{link}").status_code == 404, link


def test_anonymous_uploads_are_rate_limited_per_client(tmp_path: Path) -> None:
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    extra = "anonymous_uploads = true\nuploads_per_minute = 3"
    config, port = hosting_config(tmp_path, hosted, extra)
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        statuses = []
        for _ in range(5):
            files = {"file": ("a.jpg", photo(64, 64), "image/jpeg")}
            statuses.append(httpx.post(f"{base}/api/v1/images", files=files, timeout=30))
        assert [answer.status_code for answer in statuses] == [201, 201, 201, 429, 429]
        assert int(statuses[3].headers["retry-after"]) >= 1
        assert statuses[0].json()["delete_token"]


def test_a_view_before_its_derivative_exists_renders_it_once(tmp_path: Path) -> None:
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    config, port = hosting_config(tmp_path, hosted, 'eager_formats = ["jpeg"]')
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        hosting = Hosting(base, hosted, tmp_path)
        url = hosting.upload(photo(2000, 1333)).json()["url"]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            views = list(pool.map(lambda _n: httpx.get(f"{url}/800.webp", timeout=60), range(8)))
        assert {view.status_code for view in views} == {200}
        assert len({view.content for view in views}) == 1
        metrics = httpx.get(f"{base}/metrics").text
        renders = [line for line in metrics.splitlines() if line.startswith("tessera_hosting_renders_total")]
        assert 'tessera_hosting_renders_total{format="webp",when="view"} 1.0' in renders, renders


def test_jobs_pending_at_a_crash_resume_after_the_restart(tmp_path: Path) -> None:
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    config, port = hosting_config(tmp_path, hosted, "[jobs]\nworkers = 1")
    log = tmp_path / "serve.log"
    links = []
    with tessera_process(config, port, log) as (base, process):
        hosting = Hosting(base, hosted, tmp_path)
        for n in range(8):
            answer = hosting.upload(photo(2400 + n, 1600))
            assert answer.status_code == 201
            links.append(answer.json()["link"])
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with sqlite3.connect(tmp_path / "cache" / "jobs.sqlite") as jobs:
        states = [state for (state,) in jobs.execute("SELECT state FROM tessera_jobs")]
    assert len(states) == 8 and any(state != "done" for state in states), states
    with tessera_server(config, port, log) as base:
        hosting = Hosting(base, hosted, tmp_path)
        for link in links:
            ready = hosting.wait_ready(link, timeout=60)
            assert names(ready) >= EAGER, ready
            assert httpx.get(f"{base}/i/{link}/500.webp").status_code == 200


def test_the_link_map_on_postgresql(tmp_path: Path, postgres: Any) -> None:
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    url = postgres.url().replace("postgresql://", "postgresql://", 1)
    config, port = hosting_config(tmp_path, hosted, database=url)
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        hosting = Hosting(base, hosted, tmp_path)
        answer = hosting.upload(photo(800, 600)).json()
        assert httpx.get(answer["url"]).status_code == 200
        assert hosting.wait_ready(answer["link"])["width"] == 800
        headers = {"X-Delete-Token": answer["delete_token"]}
        assert httpx.delete(answer["status_url"], headers=headers).status_code == 204
        assert httpx.get(answer["url"]).status_code == 410


def test_a_lost_database_answers_503_with_a_reason_and_uploads_resume_when_it_is_back(tmp_path: Path) -> None:
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    with postgres_server() as server:
        config, port = hosting_config(tmp_path, hosted, database=server.url())
        with tessera_server(config, port, tmp_path / "serve.log") as base:
            hosting = Hosting(base, hosted, tmp_path)
            assert hosting.upload(photo(640, 480)).status_code == 201
            server.halt()
            try:
                started = time.monotonic()
                refused = hosting.upload(photo(640, 480))
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"] == "DatabaseUnavailable"
                assert refused.headers["Retry-After"]
                assert time.monotonic() - started < 15
                assert httpx.get(f"{base}/i/Zz9Zz9Zz").status_code in (404, 503)
            finally:
                server.resume()
            assert hosting.upload(photo(641, 480)).status_code == 201


def test_a_process_that_read_a_row_while_processing_sees_it_ready_after_another_finished_it(
    tmp_path: Path,
) -> None:
    """Two servers on one link map (as the shards of ``--workers`` are) and no invalidation stream:
    the one that did not run the job must not keep the row it read while the job ran."""
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    database = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a, port_a = hosting_config(tmp_path / "a", hosted, database=database)
    config_b, port_b = hosting_config(tmp_path / "b", hosted, database=database)
    with (
        tessera_server(config_a, port_a, tmp_path / "a.log") as a,
        tessera_server(config_b, port_b, tmp_path / "b.log") as b,
    ):
        uploader = Hosting(a, hosted, tmp_path)
        seen_processing = None
        for attempt in range(8):  # until B reads a row while A's job still runs
            link = uploader.upload(photo(2400 + attempt, 1600)).json()["link"]
            if httpx.get(f"{b}/api/v1/images/{link}").json()["status"] == "processing":
                seen_processing = link
                break
        assert seen_processing is not None, "every job ended before the other server looked"
        uploader.wait_ready(seen_processing)
        deadline = time.monotonic() + 10
        while httpx.get(f"{b}/api/v1/images/{seen_processing}").json()["status"] != "ready":
            assert time.monotonic() < deadline, "the other server still says processing"
            time.sleep(0.1)


def test_uploads_in_progress_are_bounded_and_a_slow_client_holds_only_its_own_slot(tmp_path: Path) -> None:
    """Each upload in progress holds its body: past 8 per decode slot, 503 at once (memory bound)."""
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    config, port = hosting_config(tmp_path, hosted, "processing_concurrency = 1")
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        slow = []
        head = (
            f"POST /api/v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
        ).encode()
        try:
            for _ in range(8):  # each sends its headers and a little of its body, then stalls
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(head + b"\xff\xd8\xff" + b"x" * 1000)
                slow.append(sock)
            time.sleep(0.5)
            refused = hosting_upload(base, photo(64, 64))
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1" and refused.json()["error"]
        finally:
            for sock in slow:
                sock.close()
        deadline = time.monotonic() + 10
        while (answer := hosting_upload(base, photo(64, 64))).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert answer.status_code == 201, answer.text  # the slots came back with the clients gone


def hosting_upload(base: str, data: bytes) -> httpx.Response:
    files = {"file": ("a.jpg", data, "image/jpeg")}
    return httpx.post(f"{base}/api/v1/images", files=files, headers=AUTH, timeout=30)

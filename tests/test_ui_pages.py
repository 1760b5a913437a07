"""The web pages in a real headless Chromium against a real ``tessera serve``: browse, deep-zoom,
upload (share and store), a hosted image's page, the dashboard; hostile names; a 360 px screen.

Every page must load without a console error or uncaught exception (the errors a test provokes on
purpose, such as the 415 of a fake image, are the only ones allowed, by pattern). Screenshots of each
page go to ``tests/artifacts/`` (the README's copies are in ``docs/screenshots/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pyvips
from playwright.sync_api import Browser, Response, expect

from tests.support.browser import chromium, watched_page
from tests.support.tessera_server import tessera_server, write_config

TOKEN = "ui-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = [
    "<script>window.pwned=1<!-- .txt",  # no "/" in a name: the browser closes the script itself
    "<svg onload=window.pwned=3>.txt",
    '<img src=x onerror="window.pwned=2">.txt',
    'quote\'s "double" & amp.txt',
    "ünïcødé 日本語 ✓.txt",
]
MANY = 130  # more than a listing page (100)
#: Chromium logs every 4xx it receives as a console error: these are the ones the tests ask for.
REFUSED_UPLOAD = r"status of (401|415)"


@dataclass
class Site:
    base: str
    files: Path


def picture(width: int, height: int) -> pyvips.Image:
    """A colourful gradient (no blank tile anywhere)."""
    xyz = pyvips.Image.xyz(width, height)
    red = xyz[0] * (255 / width)
    green = xyz[1] * (255 / height)
    blue = (xyz[0] + xyz[1]) * (255 / (width + height))
    return red.bandjoin([green, blue]).cast("uchar")


def jpeg(width: int = 900, height: int = 600) -> bytes:
    data: bytes = picture(width, height).jpegsave_buffer(Q=85)
    return data


def make_files(files: Path) -> None:
    maps = files / "maps"
    maps.mkdir(parents=True)
    picture(3000, 2000).tiffsave(
        str(maps / "chart.tif"), tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256
    )
    picture(1200, 800).jpegsave(str(maps / "harbour.jpg"))
    picture(640, 960).pngsave(str(maps / "plan.png"))
    (maps / "surveys").mkdir()
    (maps / "surveys" / "notes.txt").write_text("survey notes\n")
    (files / "readme.txt").write_text("hello\n")
    hostile = files / "hostile"
    hostile.mkdir()
    for name in HOSTILE:
        (hostile / name).write_text(name)
    many = files / "many"
    many.mkdir()
    for i in range(MANY):
        (many / f"file-{i:03d}.txt").write_text(str(i))
    warm = files / "warm"
    warm.mkdir()
    (warm / "blob.bin").write_bytes(bytes(range(256)) * 12_000)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ui")
    files, hosted = tmp / "files", tmp / "hosted"
    make_files(files)
    hosted.mkdir()
    config, port = write_config(
        tmp,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[hosting]
mount = "hosted"
database_url = "sqlite:///{tmp / "hosting.sqlite"}"
max_upload_size = "8MB"
[mounts.files]
origin = "file://{files}"
[mounts.hosted]
origin = "file://{hosted}"
public = false
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    with tessera_server(config, port, tmp / "serve.log") as base:
        yield Site(base, files)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def test_pages_are_not_part_of_the_api_but_their_json_is(site: Site) -> None:
    schema = httpx.get(f"{site.base}/openapi.json").json()
    assert not {"/", "/upload", "/dashboard"} & set(schema["paths"])
    assert not [p for p in schema["paths"] if p.startswith(("/view/", "/v/", "/ui/"))]
    assert {"/api/v1/cached/{path}", "/api/v1/stats/history"} <= set(schema["paths"])
    page = httpx.get(f"{site.base}/")
    assert page.status_code == 200
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers it
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{site.base}/ui/vendor/openseadragon.min.js").status_code == 200
    assert httpx.get(f"{site.base}/ui/../pages.py").status_code == 404
    assert httpx.get(f"{site.base}/ui/%2e%2e/pages.py").status_code == 404


def test_browse_into_a_folder_and_deep_zoom_an_image(site: Site, browser: Browser) -> None:
    with watched_page(browser, viewport={"width": 1280, "height": 900}) as w:
        page = w.page
        page.goto(f"{site.base}/")
        expect(page.get_by_role("link", name="files", exact=True)).to_be_visible()
        w.screenshot("home-mounts")
        page.get_by_role("link", name="files", exact=True).click()
        expect(page.get_by_role("link", name="maps/")).to_be_visible()
        expect(page.get_by_role("cell", name="readme.txt")).to_be_visible()
        page.get_by_role("link", name="maps/").click()
        expect(page.get_by_role("link", name="surveys/")).to_be_visible()
        thumbs = page.locator("#rows img")
        expect(thumbs).to_have_count(3)
        expect(thumbs.first).to_have_attribute(
            "src", "/thumbs/files%2Fmaps%2Fchart.tif/full/100,67/0/default.jpg"
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('#rows img')].every((i) => i.naturalWidth > 0)"
        )
        w.screenshot("home-folder")

        tiles: list[Response] = []
        page.on(
            "response", lambda r: tiles.append(r) if "/iiif/3/" in r.url and r.url.endswith(".jpg") else None
        )
        page.get_by_role("link", name="chart.tif").click()
        expect(page).to_have_url(f"{site.base}/view/files%2Fmaps%2Fchart.tif")
        expect(page.locator("#status")).to_have_text("Tiles loaded.", timeout=30_000)
        assert tiles and all(r.status == 200 for r in tiles), [(r.url, r.status) for r in tiles]
        painted = page.evaluate(
            """() => {
                const canvas = document.querySelector('#osd canvas');
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                const colours = new Set();
                for (let i = 0; i < data.length; i += 4 * 97) {
                    colours.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
                }
                return colours.size;
            }"""
        )
        assert painted > 50  # a gradient, not a blank or single-coloured canvas
        expect(page.locator("#facts")).to_contain_text("3000 \u00d7 2000 px")
        expect(page.locator("#facts")).to_contain_text("TIF")
        expect(page.locator("#facts dd[data-key=cached]")).to_contain_text("%")
        expect(page.locator("#links")).to_contain_text("/iiif/3/files%2Fmaps%2Fchart.tif/info.json")
        # Keyboard: the image itself takes focus and zooms with "=": more of the canvas is painted.
        covered = (
            "() => { const c = document.querySelector('#osd canvas');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
            " for (let i = 3; i < d.length; i += 4 * 31) if (d[i] > 0) n += 1; return n / (d.length / 124); }"
        )
        before = page.evaluate(covered)
        page.locator("#osd .openseadragon-canvas").focus()
        for _ in range(4):
            page.keyboard.press("=")
        page.wait_for_timeout(1500)
        assert page.evaluate(covered) > before, before
        assert all(r.status == 200 for r in tiles)
        page.get_by_role("button", name="Fit the whole image").click()
        page.wait_for_timeout(2000)  # the animation
        fitted = page.evaluate(covered)
        w.screenshot("viewer")
        # Rotated a quarter turn, the landscape image stands upright: less of the wide canvas painted.
        page.get_by_role("button", name="Rotate right").focus()
        page.keyboard.press("Enter")
        page.wait_for_timeout(2000)
        assert page.evaluate(covered) < fitted - 0.1
        w.screenshot("viewer-rotated")
        assert w.unexpected() == []


def test_a_large_folder_is_paged_and_searchable(site: Site, browser: Browser) -> None:
    with watched_page(browser) as w:
        page = w.page
        page.goto(f"{site.base}/?path=/files/many/")
        rows = page.locator("#rows tr")
        expect(rows).to_have_count(100)
        page.get_by_role("button", name="Load more").click()
        expect(rows).to_have_count(MANY)
        expect(page.get_by_role("button", name="Load more")).to_be_hidden()
        page.get_by_label("Names starting with").fill("file-12")
        page.get_by_role("button", name="Search").click()
        expect(rows).to_have_count(10)
        expect(rows.first).to_contain_text("file-120.txt")
        assert w.unexpected() == []


def test_hostile_names_are_shown_as_text(site: Site, browser: Browser) -> None:
    with watched_page(browser) as w:
        page = w.page
        page.goto(f"{site.base}/?path=/files/hostile/")
        names = page.locator("#rows td:nth-child(2)")
        expect(names).to_have_count(len(HOSTILE))
        assert sorted(names.all_inner_texts()) == sorted(HOSTILE)
        assert page.evaluate("() => window.pwned") is None
        assert page.locator("#rows script, #rows svg, #rows img[src=x]").count() == 0
        # The link fetches the very file, whatever characters its name has.
        href = page.get_by_role("link", name=HOSTILE[2]).get_attribute("href")
        assert httpx.get(site.base + href).text == HOSTILE[2]
        w.screenshot("home-hostile")
        assert w.unexpected() == []


def test_errors_of_the_api_are_shown(site: Site, browser: Browser) -> None:
    with watched_page(browser) as w:
        page = w.page
        page.goto(f"{site.base}/?path=/nosuchmount/")
        expect(page.get_by_role("alert")).to_contain_text("nosuchmount")
        page.goto(f"{site.base}/view/files%2Freadme.txt")
        expect(page.get_by_role("alert")).to_contain_text("Cannot show /files/readme.txt")
        assert w.unexpected(r"status of (404|415)") == []


def test_upload_images_get_a_link_or_the_reason_and_the_link_page_works(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    good, fake = tmp_path / "sunset.jpg", tmp_path / "fake.jpg"
    good.write_bytes(jpeg())
    fake.write_bytes(b"<html>not an image at all</html>")
    with watched_page(browser, viewport={"width": 1000, "height": 900}) as w:
        page = w.page
        page.goto(f"{site.base}/upload")
        page.locator("#files").set_input_files([str(good), str(fake)])
        # The server needs a token for uploads: asked once, then both go.
        ask = page.get_by_label("Token", exact=True)
        expect(ask).to_be_focused()
        ask.fill(TOKEN)
        page.get_by_role("button", name="Upload with this token").click()
        items = page.locator("#queue > li")
        expect(items.filter(has_text="sunset.jpg")).to_contain_text("Uploaded.")
        expect(items.filter(has_text="fake.jpg")).to_contain_text("Refused (415)")
        expect(items.filter(has_text="fake.jpg")).to_contain_text("not a supported image")
        preview = items.filter(has_text="sunset.jpg").locator("img")
        page.wait_for_function("() => document.querySelector('#queue img').naturalWidth > 0")
        assert preview.get_attribute("alt") == "Preview of sunset.jpg"
        link_text = items.filter(has_text="sunset.jpg").locator("code a").first.inner_text()
        assert "/i/" in link_text
        link = link_text.rsplit("/", 1)[1]
        assert httpx.get(link_text).status_code == 200
        assert page.evaluate("() => sessionStorage.getItem('tessera.token')") == TOKEN
        w.screenshot("upload")

        page.get_by_role("link", name=f"/v/{link}").click()
        expect(page).to_have_url(f"{site.base}/v/{link}")
        image = page.locator("#picture img")
        page.wait_for_function("() => (document.querySelector('#picture img') || {}).naturalWidth > 0")
        assert "500w" in image.get_attribute("srcset")
        assert page.evaluate("() => document.querySelector('#picture img').currentSrc").startswith(
            f"{site.base}/i/{link}/"
        )
        expect(page.locator("#links")).to_contain_text(f"/i/{link}")
        w.screenshot("image")
        w.confirms.append("Delete this image")
        page.get_by_role("button", name="Delete this image").click()
        expect(page.locator("#status")).to_have_text("Deleted.")
        assert httpx.get(f"{site.base}/i/{link}").status_code == 410
        assert w.unexpected(REFUSED_UPLOAD) == []


def test_store_mode_sends_any_file_through_tus_into_a_folder(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    big = tmp_path / "data.bin"
    big.write_bytes(bytes(range(256)) * 80_000)  # 20 MB: two tus chunks
    with watched_page(browser) as w:
        page = w.page
        page.goto(f"{site.base}/upload")
        page.evaluate(f"sessionStorage.setItem('tessera.token', '{TOKEN}')")
        page.get_by_label("Store files of any size").check()
        page.get_by_label("Folder", exact=True).fill("/files/incoming/")
        page.locator("#files").set_input_files(str(big))
        item = page.locator("#queue > li")
        expect(item).to_contain_text("Stored as /files/incoming/data.bin.", timeout=60_000)
        assert (site.files / "incoming" / "data.bin").read_bytes() == big.read_bytes()
        assert w.unexpected() == []


def test_files_dropped_on_the_page_are_uploaded(site: Site, browser: Browser) -> None:
    with watched_page(browser) as w:
        page = w.page
        page.goto(f"{site.base}/upload")
        page.evaluate(f"sessionStorage.setItem('tessera.token', '{TOKEN}')")
        dropped = page.evaluate_handle(
            """() => {
                const data = new DataTransfer();
                data.items.add(new File(["plain text"], "dropped.png", { type: "image/png" }));
                return data;
            }"""
        )
        page.locator("#drop").dispatch_event("drop", {"dataTransfer": dropped})
        item = page.locator("#queue > li")
        expect(item).to_contain_text("dropped.png")
        expect(item).to_contain_text("Refused (415)")
        assert w.unexpected(r"status of 415") == []


def test_a_stored_upload_cut_off_by_a_reload_resumes(site: Site, browser: Browser, tmp_path: Path) -> None:
    big = tmp_path / "survey.bin"
    big.write_bytes(bytes(range(256)) * 160_000)  # 40 MB: three tus pieces
    created: list[str] = []
    with watched_page(browser) as w:
        page = w.page
        page.on(
            "request",
            lambda r: created.append(r.url) if r.method == "POST" and "/uploads/" in r.url else None,
        )

        def choose() -> None:
            page.goto(f"{site.base}/upload")
            page.get_by_label("Store files of any size").check()
            page.get_by_label("Folder", exact=True).fill("/files/surveys/")
            page.locator("#files").set_input_files(str(big))

        page.goto(f"{site.base}/upload")
        page.evaluate(f"sessionStorage.setItem('tessera.token', '{TOKEN}')")
        with page.expect_response(lambda r: r.request.method == "PATCH" and r.status == 204):
            choose()
        choose()  # the page again (the first upload stops mid-way), and the same file
        item = page.locator("#queue > li")
        expect(item).to_contain_text("Stored as /files/surveys/survey.bin.", timeout=60_000)
        assert (site.files / "surveys" / "survey.bin").read_bytes() == big.read_bytes()
        assert len(created) == 1, created  # one tus upload, resumed: not created again
        assert w.unexpected() == []


def test_the_dashboard_moves_after_a_warm(site: Site, browser: Browser) -> None:
    with watched_page(browser, viewport={"width": 1280, "height": 1000}) as w:
        page = w.page
        page.goto(f"{site.base}/dashboard")
        since_start = page.locator("dd[data-key=origin-bytes]")
        expect(since_start).not_to_be_empty()
        expect(page.locator("#tier-disk")).to_have_count(1)
        expect(page.locator("#top-note")).to_contain_text("admin token")
        before, hour_before = since_start.inner_text(), page.locator("dd[data-key=origin-hour]").inner_text()
        warmed = httpx.post(f"{site.base}/api/v1/cache/warm", json={"path": "/files/warm/"}, headers=AUTH)
        assert warmed.status_code == 200 and warmed.json()["bytes"] > 3_000_000, warmed.text
        expect(since_start).not_to_have_text(before, timeout=15_000)
        expect(page.locator("dd[data-key=origin-hour]")).not_to_have_text(hour_before, timeout=20_000)
        # An admin token shows the most read objects.
        page.get_by_text("Token", exact=True).click()
        page.get_by_label("Access token").fill(TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#top-rows tr").first).to_be_visible(timeout=15_000)
        page.get_by_text("Token", exact=True).click()
        w.screenshot("dashboard")
        assert w.unexpected() == []


def test_every_page_fits_360_px_and_is_keyboard_usable(site: Site, browser: Browser) -> None:
    with watched_page(browser, viewport={"width": 360, "height": 740}) as w:
        page = w.page
        for name, url in [
            ("home", "/?path=/files/hostile/"),
            ("viewer", "/view/files%2Fmaps%2Fchart.tif"),
            ("upload", "/upload"),
            ("dashboard", "/dashboard"),
        ]:
            page.goto(site.base + url)
            page.wait_for_load_state("networkidle")
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 360, (name, width)
            w.screenshot(f"narrow-{name}")
        # Keyboard: the skip link comes first, then the navigation; the file picker is reachable.
        page.goto(f"{site.base}/upload")
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        for _ in range(12):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.id") == "files":
                break
        assert page.evaluate("() => document.activeElement.id") == "files"
        assert w.unexpected() == []


def test_the_pages_work_on_a_server_without_any_token(browser: Browser, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    picture(600, 400).jpegsave(str(files / "small.jpg"))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg())
    config, port = write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[hosting]
database_url = "sqlite:///{tmp_path / "hosting.sqlite"}"
[mounts.files]
origin = "file://{files}"
[mounts.hosted]
origin = "file://{tmp_path / "hosted"}"
public = false
""",
    )
    (tmp_path / "hosted").mkdir()
    with tessera_server(config, port, tmp_path / "serve.log") as base, watched_page(browser) as w:
        page = w.page
        page.goto(f"{base}/?path=/files/")
        page.wait_for_function("() => (document.querySelector('#rows img') || {}).naturalWidth > 0")
        page.goto(f"{base}/dashboard")
        expect(page.locator("dd[data-key=reads]")).not_to_be_empty()
        expect(page.locator("#top-note")).to_be_visible()
        page.goto(f"{base}/upload")
        page.locator("#files").set_input_files(str(photo))
        # Writes are refused without a configured token: the page says so, with the API's reason.
        expect(page.locator("#token-ask-why")).to_contain_text("Uploads need a token")
        expect(page.locator("#queue > li")).to_contain_text("Needs a token")
        assert w.unexpected(r"status of 40[13]") == []

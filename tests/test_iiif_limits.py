"""The IIIF request layer under attack, against a real ``tessera serve``: JPEG 2000 regions inside one
codestream tile with any rotation or size, absurd paths refused early, memos that paths naming no
image cannot grow, a ``Host`` header that is never reflected unchecked, URL fuzzing; and the pure
pieces (byte-bounded memos, the ``Host`` rule) on their own.
"""

from __future__ import annotations

import array
import asyncio
import http.client
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.config import load_settings
from tessera.lru import LRU, SHARED, approx_size
from tessera.web.base_url import valid_host
from tests.support.iiif_server import IiifServer, iiif_server
from tests.support.moto_server import MotoServer, free_port
from tests.support.tessera_server import tessera_server
from tests.test_iiif import TEST_IMAGE, validator_image

PICTURE = "picture.jp2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[IiifServer]:
    tmp = tmp_path_factory.mktemp("limits")
    folder = tmp / "img"
    folder.mkdir()
    picture = validator_image()
    picture.jp2ksave(str(folder / PICTURE), tile_width=512, tile_height=512)
    picture.pngsave(str(folder / TEST_IMAGE))
    settings = '[images]\nderivative_cache = false\nmax_area = 4000000\ndecoded_cache = "16MB"'
    with iiif_server(tmp, folder, moto, settings) as running:
        # Read whole through the cache, so every JPEG 2000 request below is decoded by OpenJPEG.
        assert running.get(f"/api/v1/files/img/{PICTURE}").status_code == 200
        yield running


def server_rss(config: Path) -> int:
    """Resident bytes of the ``tessera serve`` process started on ``config``."""
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if str(config).encode() in (process / "cmdline").read_bytes().split(b"\0"):
                status = (process / "status").read_text()
                return int(status.split("VmRSS:")[1].split()[0]) * 1024
        except OSError:  # a process that ended meanwhile
            continue
    raise AssertionError(f"no server process for {config}")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("256,256,256,256/max/90/default.jpg", lambda crop: crop.rot("d90")),
        ("256,256,256,256/max/180/default.png", lambda crop: crop.rot("d180")),
        ("256,256,256,256/max/!0/default.jpg", lambda crop: crop.fliphor()),
        ("256,256,256,256/128,/0/default.jpg", lambda crop: crop.resize(0.5)),
        ("300,300,100,100/^200,/0/default.jpg", lambda crop: crop.resize(2)),
        ("256,256,256,256/max/0/gray.jpg", lambda crop: crop.colourspace("b-w")),
    ],
)
def test_jpeg_2000_region_inside_one_codestream_tile_with_any_rotation_or_size(
    server: IiifServer, params: str, expected: Callable[[pyvips.Image], pyvips.Image]
) -> None:
    """Issue 9 defect 7: a piece cut from a decoded codestream tile was a strided view, a 500."""
    before = server.made("openjpeg")
    response = server.get(f"/iiif/3/img%2F{PICTURE}/{params}")
    assert response.status_code == 200, response.text
    assert server.made("openjpeg") == before + 1  # the direct path, not a libvips fallback
    got = pyvips.Image.new_from_buffer(response.content, "")
    x, y, w, h = (int(v) for v in params.split("/")[0].split(","))
    want = expected(validator_image().crop(x, y, w, h))
    assert (got.width, got.height, got.bands) == (want.width, want.height, want.bands)
    assert (got.cast("float") - want.cast("float")).abs().avg() < 6


@pytest.mark.parametrize("version", ["3.0", "2.0"])
def test_official_validator_on_a_jpeg_2000_source(server: IiifServer, version: str) -> None:
    """Every level 0-2 test (``rot_region_basic``, ``size_region`` among them) decoded by OpenJPEG."""
    from iiif_validator.validator import ImageAPI, TestSuite, ValidationInfo

    suite = TestSuite(ValidationInfo())
    prefix = "iiif/3" if version == "3.0" else "iiif/2"
    before = server.made("openjpeg")
    failures = []
    for name, test in suite.list_tests(version).items():
        if test.get("level", 0) > 2:
            continue
        result = ImageAPI(
            f"img%2F{PICTURE}", server.base.removeprefix("http://"), prefix, "http", "", version, debug=False
        )
        suite.run_test(name, result)
        if result.exception:
            failures.append((name, result.exception.type, result.exception.got, result.exception.expected))
    assert failures == []
    assert server.made("openjpeg") > before + 10


def test_absurdly_long_paths_are_refused_before_parsing(server: IiifServer) -> None:
    long_id = "img%2F" + "a" * 60_000
    for path in (f"/iiif/3/{long_id}/info.json", f"/thumbs/{long_id}/info.json", f"/iiif/2/{long_id}"):
        response = server.get(path)
        assert response.status_code == 414, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "longer than 4096" in response.text
    # The longest identifier a virtual path allows, every byte percent-encoded, is still answered.
    longest = "img%2F" + "%2F".join(["%C3%A9" * 125] * 4)  # /img/ and four segments of 250 bytes
    path = f"/iiif/3/{longest}/pct:0.5,0.5,99.5,99.5/%5E!1000,1000/!359.5/bitonal.webp"
    assert len(path) <= 4096
    assert server.get(path).status_code == 404  # no such object, but a path the server reads


async def _hammer(base: str, paths: list[str], connections: int = 8) -> list[int]:
    """GET every path over a few keep-alive connections; the statuses."""
    statuses: list[int] = []
    queue = iter(paths)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker() -> None:
            for path in queue:
                statuses.append((await client.get(path)).status_code)

        await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


@pytest.mark.anyio
async def test_paths_naming_no_image_do_not_grow_the_server(server: IiifServer) -> None:
    """Issue 9 defect 4: 25,000 paths of 60 kB took the server from 195 MB to 3.6 GB, kept in a memo
    filled before the identifier was checked. Now only answered requests are kept, bounded in bytes."""
    config = server.folder.parent / "tessera.toml"
    pad = "x" * 3900
    paths = [  # well-formed requests naming no image, each path different
        f"/iiif/3/nomount%2F{pad}{n}/0,0,10,10/max/0/default.jpg"
        if n % 2
        else f"/iiif/2/img%2Fmissing{pad}{n}.jp2/full/full/0/default.jpg"
        for n in range(1000)
    ]
    await _hammer(server.base, [f"{path}.x" for path in paths[:100]])  # the server's own warm-up
    before = server_rss(config)
    statuses = await _hammer(server.base, paths)
    grown = server_rss(config) - before
    assert set(statuses) == {404}
    # Kept, these paths took 13 MB (1,000 x 4 kB, and the identifier decoded); now none is kept.
    assert grown < 5 * 1024 * 1024, grown
    assert server.get(f"/iiif/3/img%2F{PICTURE}/0,0,256,256/256,/0/default.jpg").status_code == 200


# IIIF URL fuzzing: well-formed, odd and hostile segments in every position.
_SENSIBLE = st.integers(0, 1200).map(str)
_NUMBERS = st.one_of(
    _SENSIBLE,
    _SENSIBLE,
    _SENSIBLE,
    st.integers(-(10**40), 10**40).map(str),
    st.sampled_from(["9" * 15, "9" * 16, "1e9", "NaN", "inf", "-0", "0x10", "1.5", ".5", "5.", "", " 1"]),
)
_SEGMENT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="0123456789.,!^:%pctmaxfulsqr-", max_size=30),
    st.sampled_from(["%00", "%", "%zz", "%2F", "..", ".", "%2e%2e", "%C3%28", "\u0663", "\uff11", "\u202e"]),
    st.lists(_NUMBERS, min_size=1, max_size=5).map(",".join),
)
_REGION = st.one_of(
    st.sampled_from(["full", "square"]),
    st.lists(_SENSIBLE, min_size=4, max_size=4).map(",".join),
    st.lists(st.integers(0, 100).map(str), min_size=4, max_size=4).map(lambda n: "pct:" + ",".join(n)),
    st.lists(_NUMBERS, min_size=4, max_size=4).map(",".join),
    st.lists(_NUMBERS, min_size=4, max_size=4).map(lambda n: "pct:" + ",".join(n)),
    _SEGMENT,
)
_SIZE = st.one_of(
    st.sampled_from(["max", "^max", "full"]),
    st.tuples(st.sampled_from(["", "^", "!", "^!"]), _SENSIBLE, st.sampled_from(["", "256"])).map(
        lambda t: f"{t[0]}{t[1]},{t[2]}"
    ),
    st.tuples(st.sampled_from(["", "^", "!", "^!"]), _NUMBERS, _NUMBERS).map(
        lambda t: f"{t[0]}{t[1]},{t[2]}"
    ),
    st.tuples(st.sampled_from(["pct:", "^pct:"]), _NUMBERS).map("".join),
    _SEGMENT,
)
_ROTATION = st.one_of(
    st.sampled_from(["0", "90", "180", "270", "!0", "22.5"]),
    st.tuples(st.sampled_from(["", "!"]), _NUMBERS).map("".join),
    _SEGMENT,
)
_QUALITY_FORMAT = st.one_of(
    st.tuples(
        st.sampled_from(["default", "color", "gray", "bitonal", "grey", ""]),
        st.sampled_from(["jpg", "png", "webp", "tif", "gif", "jp2", "pdf", "exe", ""]),
    ).map(".".join),
    _SEGMENT,
)
_IDENTIFIER = st.one_of(
    st.sampled_from([f"img%2F{PICTURE}", f"img%2F{TEST_IMAGE}"]),
    st.sampled_from([f"img%2F{PICTURE}", f"img%2F{TEST_IMAGE}"]),
    st.sampled_from([f"img%2F{PICTURE}", f"img%2F{TEST_IMAGE}", "img%2Fmissing.png", "nomount%2Fa.png"]),
    st.sampled_from(["img", "img%2F", "%2Fimg%2Fa", "img%2F..%2F..%2Fetc%2Fpasswd", "img%00%2Fa", "img/a"]),
    st.integers(0, 4000).map(lambda n: "img%2F" + "a" * n),
    st.text(max_size=40).map(lambda text: "img%2F" + quote(text, safe="")),
)
_KEEP = "%!,:^.~-_"


@st.composite
def iiif_urls(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["/iiif/3/", "/iiif/2/", "/iiif/3/", "/iiif/2/", "/thumbs/", "/iiif/4/"]))
    tail = draw(
        st.one_of(
            st.tuples(_REGION, _SIZE, _ROTATION, _QUALITY_FORMAT).map(list),
            st.tuples(_REGION, _SIZE, _ROTATION, _QUALITY_FORMAT).map(list),
            st.tuples(_REGION, _SIZE, _ROTATION, _QUALITY_FORMAT).map(list),
            st.just(["info.json"]),
            st.just([]),
            st.lists(_SEGMENT, max_size=6),
        )
    )
    segments = [quote(segment, safe=_KEEP) for segment in tail]
    return prefix + "/".join([draw(_IDENTIFIER), *segments])


def test_iiif_url_fuzz_never_answers_5xx_and_memory_stays_bounded(server: IiifServer) -> None:
    """Random and hostile IIIF URLs against the real server: no 5xx (but the 501 the spec gives for
    a format it defines and this server does not render), plain-text reasons, RSS bounded."""
    config = server.folder.parent / "tessera.toml"
    statuses: Counter[int] = Counter()
    # http.client sends the path as it is (httpx would resolve "/.." segments first).
    connection = http.client.HTTPConnection(server.base.removeprefix("http://"), timeout=60)

    def get(path: str) -> tuple[int, str, bytes]:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()

    get(f"/iiif/3/img%2F{PICTURE}/full/max/0/default.jpg")  # the largest render, once
    before = server_rss(config)

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(iiif_urls())
    def answer(url: str) -> None:
        status, content_type, body = get(url)
        statuses[status] += 1
        unimplemented = status == 501 and url.endswith((".gif", ".jp2", ".pdf"))  # valid IIIF (3.0 §7.3)
        assert status < 500 or unimplemented, (url, status, body)
        if status >= 400:
            assert content_type.startswith("text/plain") and body.strip(), (url, status, body)

    try:
        answer()
    finally:
        connection.close()
    grown = server_rss(config) - before
    print("STATUSES", statuses, grown)
    assert statuses[200] > 0 and statuses[400] > 0 and statuses[404] > 0, statuses
    # Renders come and go (libvips' caches, worker threads' heaps: 10-60 MB here); nothing a client
    # sends is kept beyond the byte-bounded memos.
    assert grown < 128 * 1024 * 1024, (grown, statuses)
    assert server.get("/healthz").status_code == 200


HOSTILE_HOSTS = ['evil.example"><script>', "a b", "x<y>", "host/path", "user@host", "[zz::1]", "h:99999", ""]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_hostile_host_header_is_not_reflected(server: IiifServer, host: str) -> None:
    local = server.base  # http://127.0.0.1:PORT, the address the request came in on
    base = f"{local}/iiif/3/img%2F{PICTURE}"
    info = server.get(f"/iiif/3/img%2F{PICTURE}/info.json", headers={"Host": host})
    assert info.json()["id"] == base
    redirect = server.get(f"/iiif/3/img%2F{PICTURE}", headers={"Host": host}, follow_redirects=False)
    assert redirect.headers["location"] == f"{base}/info.json"
    image = server.get(f"/iiif/3/img%2F{PICTURE}/0,0,10,10/max/0/default.jpg", headers={"Host": host})
    assert image.headers["link"].startswith(f"<{base}/0,0,10,10/max/0/default.jpg>")
    thumbs = server.get(f"/thumbs/img%2F{PICTURE}/info.json", headers={"Host": host})
    assert thumbs.json()["id"] == f"{local}/thumbs/img%2F{PICTURE}"


@pytest.mark.parametrize(
    "host", ["images.example.org", "images.example.org:8443", "10.0.0.7:80", "[::1]:8080"]
)
def test_a_valid_host_header_names_the_server(server: IiifServer, host: str) -> None:
    info = server.get(f"/iiif/2/img%2F{PICTURE}/info.json", headers={"Host": host})
    assert info.json()["@id"] == f"http://{host}/iiif/2/img%2F{PICTURE}"
    https = server.get(
        f"/iiif/3/img%2F{PICTURE}/info.json", headers={"Host": host, "X-Forwarded-Proto": "https"}
    )
    assert https.json()["id"] == f"https://{host}/iiif/3/img%2F{PICTURE}"  # a trusted proxy (127.0.0.1)


def test_public_url_is_the_base_of_every_url(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    validator_image().crop(0, 0, 300, 200).pngsave(str(folder / "a.png"))
    port = free_port()
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'[server]\nport = {port}\npublic_url = "https://images.example.org/base/"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n[mounts.img]\norigin = "file://{folder}"\n'
    )
    public = "https://images.example.org/base"
    with tessera_server(config, port, tmp_path / "serve.log") as local:
        for host in ("evil.example", "images.example.org"):
            info = httpx.get(f"{local}/iiif/3/img%2Fa.png/info.json", headers={"Host": host})
            assert info.json()["id"] == f"{public}/iiif/3/img%2Fa.png"
            redirect = httpx.get(f"{local}/iiif/2/img%2Fa.png", headers={"Host": host})
            assert redirect.headers["location"] == f"{public}/iiif/2/img%2Fa.png/info.json"
            image = httpx.get(f"{local}/iiif/3/img%2Fa.png/full/max/0/default.jpg", headers={"Host": host})
            assert image.headers["link"].startswith(f"<{public}/iiif/3/img%2Fa.png/full/max/0/default.jpg>")
            thumbs = httpx.get(f"{local}/thumbs/img%2Fa.png", headers={"Host": host})
            assert thumbs.headers["location"] == f"{public}/thumbs/img%2Fa.png/info.json"


@pytest.mark.parametrize(
    "url",
    [
        "images.example.org",
        "ftp://images.example.org",
        "https://",
        "https://a b.org",
        "https://h/?q=1",
        "https://u:p@h.org",
        'https://h.org/"x"',
        "https://h.org:70000",
    ],
)
def test_a_bad_public_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="public_url"):
        load_settings(None, server={"public_url": url})


def test_a_good_public_url_loses_its_trailing_slash() -> None:
    settings = load_settings(None, server={"public_url": "http://[::1]:8080/iiif-front/"})
    assert settings.server.public_url == "http://[::1]:8080/iiif-front"
    assert json.dumps(settings.server.public_url)  # plain text


def test_memos_are_bounded_in_bytes_not_entries() -> None:
    memo: LRU[str, str] = LRU(1_000_000)
    for n in range(100):  # 100 keys of 60 kB: an entry count of 50,000 would keep them all
        memo.put(f"{n}" + "x" * 60_000, "v")
    assert memo.used <= 1_000_000 and len(memo) < 20
    assert memo.get("99" + "x" * 60_000) == "v"  # the most recent stay
    memo.put("huge", "y" * 2_000_000)  # heavier than the whole budget: not kept, nothing else dropped
    assert memo.get("huge") is None and memo.used <= 1_000_000


def test_weights_follow_plain_data_once_and_skip_shared_references() -> None:
    @dataclass(frozen=True)
    class Entry:
        name: str
        table: array.array
        shared: array.array = field(metadata=SHARED)

    table = array.array("Q", range(100_000))
    assert approx_size(Entry("a", table, table)) < approx_size(table) + 1000  # counted once
    assert approx_size(Entry("a", array.array("Q"), table)) < 1000  # shared: owned elsewhere
    assert approx_size(("x" * 5000, ["y" * 5000], {"k": b"z" * 5000})) > 15_000
    assert approx_size(object()) == 8  # not plain data: a reference


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("images.example.org", True),
        ("localhost:8080", True),
        ("10.0.0.7", True),
        ("[2001:db8::1]:443", True),
        ("my_service:80", True),
        ("example.org.", True),
        ("", False),
        ("a b", False),
        ('x"y', False),
        ("x<y>", False),
        ("a/b", False),
        ("u@h", False),
        ("h:", False),
        ("h:0", False),
        ("h:65536", False),
        ("[::1", False),
        ("[::1]x", False),
        ("[nope]", False),
        ("-a.org", False),
        ("a" * 300, False),
    ],
)
def test_valid_host(host: str, valid: bool) -> None:
    assert valid_host(host) is valid

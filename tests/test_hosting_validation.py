"""Upload validation (issue 12): the type from the bytes, the size from the header, nothing decoded.

Every hostile file of ``tests/support/bad_images.py`` gets its status and a reason; every good one its
type, size, frames and orientation; random and mutated headers raise nothing but ``Rejected``.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.hosting.model import Limits, Probe, Rejected
from tessera.hosting.probe import probe
from tessera.hosting.sniff import SNIFF_BYTES, sniff
from tests.support.bad_images import BOMB_FRAMES, LIMITS, bad_corpus, good_corpus, good_probes

BAD = sorted(bad_corpus())
GOOD = sorted(good_corpus())
BOMBS = ["bomb-50000x50000.png", "sof-65000x65000.jpg", "frames-10000.gif"]


def _rejection(data: bytes, limits: Limits = LIMITS) -> Rejected:
    with pytest.raises(Rejected) as caught:
        probe(data, limits)
    return caught.value


@pytest.mark.parametrize("name", BAD)
def test_every_bad_file_is_refused_with_its_status_and_a_reason(name: str) -> None:
    data, status = bad_corpus()[name]
    rejected = _rejection(data)
    assert rejected.status == status, rejected.reason
    assert len(rejected.reason) > 15 and str(rejected) == rejected.reason


@pytest.mark.parametrize("name", GOOD)
def test_every_good_file_is_read_from_its_header(name: str) -> None:
    assert probe(good_corpus()[name], LIMITS) == good_probes()[name]


def test_the_corpus_has_every_case_of_the_issue() -> None:
    bad, good = bad_corpus(), good_corpus()
    assert len(bad["bomb-50000x50000.png"][0]) < 400_000  # a bomb: 2.5 Gpx in a few hundred KB
    assert bad["frames-10000.gif"][0].count(b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00") == BOMB_FRAMES
    assert bad["empty.jpg"][0] == b""
    for cut in ("truncated-mid-scan.jpg", "truncated-mid-idat.png", "truncated-mid-data.webp"):
        assert bad[cut][1] == 422
    for kind in (
        "cmyk.jpg",
        "16bit.png",
        "pixel-1x1.png",
        "gps.jpg",
        "phone-orientation-6.jpg",
        "animated-5.gif",
    ):
        assert kind in good


def test_reasons_say_what_was_wrong() -> None:
    bad = bad_corpus()
    assert _rejection(bad["bomb-50000x50000.png"][0]).reason == (
        "image is 50000 x 50000 = 2,500 MP, over the 50 MP limit"
    )
    assert "65000 x 65000 = 4,225 MP" in _rejection(bad["sof-65000x65000.jpg"][0]).reason
    assert "more than 100 frames" in _rejection(bad["frames-10000.gif"][0]).reason
    assert "wider than the 16384 px limit" in _rejection(bad["ihdr-20000x1.png"][0]).reason
    assert "over the 40MB limit" in _rejection(bad["oversize.jpg"][0]).reason
    assert "HTML" in _rejection(bad["page.html.jpg"][0]).reason
    assert "SVG" in _rejection(bad["drawing.svg.jpg"][0]).reason
    assert "empty" in _rejection(b"").reason
    assert "cut short" in _rejection(bad["truncated-mid-scan.jpg"][0]).reason
    assert "CRC" in _rejection(bad["bad-ihdr-crc.png"][0]).reason
    assert "follow the end of the JPEG image" in _rejection(bad["polyglot-zip.jpg"][0]).reason
    assert "60000x60000" in _rejection(bad["ispe-60000x60000.avif"][0]).reason


def test_limits_are_inclusive_and_each_one_is_applied() -> None:
    plain, animated = good_corpus()["plain.jpg"], good_corpus()["animated-100.gif"]
    assert probe(plain, dataclasses.replace(LIMITS, max_bytes=len(plain))).width == 600
    assert _rejection(plain, dataclasses.replace(LIMITS, max_bytes=len(plain) - 1)).status == 413
    assert probe(plain, dataclasses.replace(LIMITS, max_pixels=600 * 400)).height == 400
    assert "0.24 MP" in _rejection(plain, dataclasses.replace(LIMITS, max_pixels=600 * 400 - 1)).reason
    assert "wider than the 599 px" in _rejection(plain, dataclasses.replace(LIMITS, max_width=599)).reason
    assert "higher than the 399 px" in _rejection(plain, dataclasses.replace(LIMITS, max_height=399)).reason
    assert probe(animated, LIMITS).frames == 100
    assert _rejection(animated, dataclasses.replace(LIMITS, max_frames=99)).status == 422
    webp = good_corpus()["animated-4.webp"]
    assert "more than 3 frames" in _rejection(webp, dataclasses.replace(LIMITS, max_frames=3)).reason


def test_sniff_reads_the_bytes_not_the_name() -> None:
    expected = {"jpg": "jpeg", "png": "png", "gif": "gif", "webp": "webp", "avif": "avif", "heic": "heif"}
    for name, data in good_corpus().items():
        assert sniff(data[:SNIFF_BYTES]) == expected[name.rsplit(".", 1)[1]], name
    with pytest.raises(Rejected) as caught:
        sniff(b"GIF90a" + bytes(20))
    assert caught.value.status == 415


@pytest.mark.parametrize("name", BOMBS)
def test_bombs_cost_well_under_a_millisecond_of_cpu(name: str) -> None:
    """A loose sanity bound (the figure is in bench/hosting_rejection.py): process CPU, not wall time."""
    data = bad_corpus()[name][0]
    rounds = 50
    started = time.process_time()
    for _ in range(rounds):
        with pytest.raises(Rejected):
            probe(data, LIMITS)
    assert (time.process_time() - started) / rounds < 0.001


def _is_probe_or_rejected(data: bytes) -> None:
    try:
        found = probe(data, LIMITS)
    except Rejected as rejected:
        assert rejected.status in (413, 415, 422) and rejected.reason
    else:
        assert isinstance(found, Probe) and found.width > 0 and found.height > 0 and found.frames >= 1


_FUZZ = settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
_MAGICS = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"\x00\x00\x00\x1cftypavif",
]


@_FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_rejected(data: bytes) -> None:
    _is_probe_or_rejected(data)


@_FUZZ
@given(st.sampled_from(_MAGICS), st.binary(max_size=256))
def test_a_signature_then_random_bytes_never_raise_anything_but_rejected(magic: bytes, rest: bytes) -> None:
    _is_probe_or_rejected(magic + rest)


_SMALL_GOOD = [name for name, data in sorted(good_corpus().items()) if len(data) < 64_000]


@_FUZZ
@given(
    st.sampled_from(_SMALL_GOOD),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 4096)),
)
def test_mutated_good_headers_never_raise_anything_but_rejected(
    name: str, changes: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(good_corpus()[name])
    for at, value in changes:
        if at < len(data):
            data[at] = value
    _is_probe_or_rejected(bytes(data if cut is None else data[:cut]))


@pytest.mark.parametrize("name", GOOD)
def test_every_good_file_decodes_whole_with_libvips_fail_on(name: str) -> None:
    """The good corpus is good for the decode too (the derivatives side decodes with fail-on)."""
    expected = good_probes()[name]
    pages = {"n": -1} if expected.type in ("gif", "webp") else {}
    image = pyvips.Image.new_from_buffer(good_corpus()[name], "", fail_on="truncated", **pages)
    assert (image.width, image.height) == (expected.width, expected.height * expected.frames)
    assert image.avg() >= 0  # every pixel decoded


@pytest.mark.parametrize(
    "name", ["truncated-mid-scan.jpg", "truncated-mid-idat.png", "truncated-mid-data.webp"]
)
def test_truncated_files_also_fail_the_decode(name: str) -> None:
    """Two defences: probe finds the missing end; libvips' fail-on finds the missing pixels."""
    data = bad_corpus()[name][0]
    with pytest.raises(pyvips.Error):
        pyvips.Image.new_from_buffer(data, "", fail_on="truncated").avg()

"""Pure logic: sizes and durations, settings precedence, path validation, ranges, block arithmetic,
listing order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tessera.cache.blocks import block_bounds, block_count, block_span, contiguous_runs
from tessera.cache.memory import MemoryTier
from tessera.config import load_settings, parse_duration, parse_size
from tessera.errors import InvalidPath
from tessera.fs.listing import ListingCache
from tessera.namespace import split_path
from tessera.origins.local import LocalOrigin
from tessera.web.ranges import Unsatisfiable, etag_matches, parse_range


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * 2**20),
        ("1TB", 2**40),
        ("4MiB", 4 * 2**20),
        ("100", 100),
        (" 1.5 GB ", int(1.5 * 2**30)),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "-1MB", "1e3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("5m") == 300
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_settings_from_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        '[cache]\ndisk_size = "1TB"\nmetadata_ttl = "5m"\n'
        '[mounts.images]\norigin = "s3://bucket/prefix"\nendpoint_url = "http://127.0.0.1:9000"\n'
    )
    monkeypatch.setenv("TESSERA_CACHE__MEMORY_SIZE", "512MB")
    monkeypatch.setenv("TESSERA_CACHE__DISK_SIZE", "2TB")  # the environment beats the file
    monkeypatch.setenv("TESSERA_SERVER__PORT", "9090")
    settings = load_settings(config)
    assert settings.cache.disk_size == 2 * 2**40
    assert settings.cache.memory_size == 512 * 2**20
    assert settings.cache.metadata_ttl == 300
    assert settings.server.port == 9090
    assert settings.mounts["images"].origin == "s3://bucket/prefix"
    assert settings.mounts["images"].endpoint_url == "http://127.0.0.1:9000"


def test_settings_defaults_need_no_server() -> None:
    settings = load_settings()
    assert settings.mounts["files"].origin.startswith("file://")
    assert settings.server.port == 8080


def test_settings_reject_nonsense(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[cache]\nlow_watermark = 0.99\nhigh_watermark = 0.5\n")
    with pytest.raises(ValueError):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/images/a/b.jp2", ("images", "a/b.jp2")),
        ("images/x", ("images", "x")),
        ("/m/ü é.tif", ("m", "ü é.tif")),
    ],
)
def test_split_path(path: str, expected: tuple[str, str]) -> None:
    assert split_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/images",
        "/images/../etc/passwd",
        "/images/./a",
        "/images//a",
        "/images/a\x00b",
        "/images/a\nb",
        "/images/a\\..\\b",
        "/images/" + "x" * 256,
        "/images/" + "/".join(["abcdefgh"] * 130),
    ],
)
def test_split_path_refuses(path: str) -> None:
    with pytest.raises(InvalidPath):
        split_path(path)


def test_split_path_prefixes() -> None:
    assert split_path("/images", allow_prefix=True) == ("images", "")
    assert split_path("/images/maps/", allow_prefix=True) == ("images", "maps")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=-5", (95, 100)),
        ("bytes=90-200", (90, 100)),
        ("bytes=5-1", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=abc", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


def test_etag_matches() -> None:
    assert etag_matches('"a", "b"', '"b"')
    assert etag_matches('W/"b"', '"b"')
    assert etag_matches("*", '"x"')
    assert not etag_matches('"a"', '"b"')
    assert not etag_matches(None, '"b"')


def test_block_arithmetic() -> None:
    assert block_count(0, 10) == 0
    assert block_count(25, 10) == 3
    assert block_bounds(2, 10, 25) == (20, 25)
    assert list(block_span(9, 21, 10)) == [0, 1, 2]
    assert list(block_span(10, 20, 10)) == [1]
    assert contiguous_runs([1, 2, 3, 7, 8, 10], max_len=2) == [(1, 2), (3, 3), (7, 8), (10, 10)]


def test_memory_tier_keeps_within_limit_lru() -> None:
    tier = MemoryTier(limit=10)
    tier.put(1, 0, b"aaaa")
    tier.put(1, 1, b"bbbb")
    assert tier.get(1, 0) == b"aaaa"  # now most recent
    tier.put(1, 2, b"cccc")
    assert tier.used <= 10
    assert tier.get(1, 1) is None and tier.get(1, 0) == b"aaaa"
    tier.put(2, 0, b"x" * 11)  # larger than the tier: not kept
    assert tier.get(2, 0) is None


@pytest.mark.anyio
async def test_a_listing_is_sorted_once_for_every_readdir_page(tmp_path: Path) -> None:
    """readdir indexes into ``names()`` a page at a time: the order is fixed and built only once."""
    names = [f"n{i:04d}.bin" for i in range(300)]
    for name in random.Random(1).sample(names, len(names)):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "zdir").mkdir()
    (tmp_path / "zdir" / "inner.bin").write_bytes(b"y")
    cache = ListingCache("m", LocalOrigin("m", str(tmp_path)), ttl=60, max_names=1000, max_bytes=1 << 20)
    listing = await cache.get("")
    first = listing.names()
    assert [name for name, _ in first] == ["zdir", *names]  # directories first, then objects by name
    assert listing.names() is first  # the second page costs no sort

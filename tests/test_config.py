"""Settings validation (pure): unknown keys anywhere are errors with the near name, sizes have a floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.config import ConfigError, format_size, load_settings


def errors_of(config: Path | None = None, **overrides: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(config, **overrides)
    return str(caught.value).splitlines()


def test_typos_in_every_section_are_named_with_the_near_key(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        '[server]\nprot = 9000\n[cache]\ndisk_sise = "1TB"\n[origin]\nretry = 2\n[fs]\nlisting_tl = "5s"\n'
        '[images]\njpeg_qualty = 90\n[mounts.images]\norigin = "s3://b/p"\nendpoint = "http://x"\n'
        "[serverr]\nport = 1\n"
    )
    assert sorted(errors_of(config)) == sorted(
        [
            "unknown key server.prot (did you mean port?)",
            "unknown key cache.disk_sise (did you mean disk_size?)",
            "unknown key origin.retry (did you mean retries?)",
            "unknown key fs.listing_tl (did you mean listing_ttl?)",
            "unknown key images.jpeg_qualty (did you mean jpeg_quality?)",
            "unknown key mounts.images.endpoint (did you mean endpoint_url?)",
            "unknown key serverr (did you mean server?)",
        ]
    )


def test_unknown_key_without_a_near_name(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[cache]\nbananas = 1\n")
    assert errors_of(config) == ["unknown key cache.bananas"]


def test_typos_in_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_CACHE__DISK_SISE", "1TB")
    assert errors_of() == [
        "unknown key cache.disk_sise (did you mean disk_size?) in TESSERA_CACHE__DISK_SISE"
    ]
    monkeypatch.delenv("TESSERA_CACHE__DISK_SISE")
    monkeypatch.setenv("TESSERA_MOUNTS__IMG__ORIGN", "s3://b")
    assert "unknown key mounts.img.orign (did you mean origin?) in TESSERA_MOUNTS__IMG__ORIGN" in errors_of()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("TESSERA_CACHEE__DISK_SIZE", "TESSERA_CACHE__DISK_SIZE"),
        ("TESSERA_CACHE_DISK_SIZE", "TESSERA_CACHE__DISK_SIZE"),
    ],
)
def test_environment_variables_that_name_no_section(
    monkeypatch: pytest.MonkeyPatch, name: str, suggestion: str
) -> None:
    """pydantic-settings drops a variable that matches no field; the loader refuses it instead."""
    monkeypatch.setenv(name, "1TB")
    (line,) = errors_of()
    assert line.startswith(f"unknown environment variable {name} (did you mean {suggestion}?)")


def test_bad_values_are_one_line_each_naming_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SERVER__PORT", "eighty")
    lines = errors_of(cache={"metadata_ttl": "soon"})
    assert len(lines) == 2
    assert "cache.metadata_ttl: not a duration: 'soon' (try '30s', '5m' or '250ms')" in lines
    assert any(line.startswith("server.port (TESSERA_SERVER__PORT): ") for line in lines)


def test_a_size_without_unit_below_the_minimum_suggests_the_unit() -> None:
    assert errors_of(cache={"disk_size": 10}) == [
        "cache.disk_size: 10 bytes is too small for a cache (at least 16MB: 16 blocks of cache.block_size);"
        " did you mean 10GB?"
    ]
    assert errors_of(cache={"disk_size": "10MB"}) == [
        "cache.disk_size: 10MB is too small for a cache (at least 16MB: 16 blocks of cache.block_size)"
    ]
    with_second = errors_of(cache={"second_dir": "/tmp/x", "second_size": "100"})
    assert with_second[0].startswith("cache.second_size: 100 bytes is too small for a cache")
    assert load_settings(cache={"disk_size": "16MB"}).cache.disk_size == 16 * 2**20
    assert load_settings(cache={"disk_size": "1MB", "block_size": "64KB"}).cache.disk_size == 2**20


@pytest.mark.parametrize(
    ("origin", "problem"),
    [
        ("", "empty origin"),
        ("ftp://host/x", "unsupported origin 'ftp://host/x'"),
        ("s3://", "origin 's3://' names no bucket"),
        ("https://", "'https://' names no valid host"),
        ("http://exa mple.org/", "'http://exa mple.org/' names no valid host"),
        ("http://host:99999/", "'http://host:99999/' is not a valid URL"),
    ],
)
def test_origins_that_cannot_work_are_config_errors(origin: str, problem: str) -> None:
    (line,) = errors_of(mounts={"m": {"origin": origin}})
    assert line.startswith(f"mounts.m.origin: {problem}")


def test_endpoint_must_be_an_http_url() -> None:
    (line,) = errors_of(mounts={"m": {"origin": "s3://b", "endpoint_url": "127.0.0.1:9000"}})
    assert line == "mounts.m.endpoint_url: endpoint '127.0.0.1:9000' is not an http:// or https:// URL"


@pytest.mark.parametrize(
    "origin",
    [
        "s3://bucket/prefix",
        "file:///srv/images",
        "var/files",
        "https://example.org/base/",
        "http://[::1]:8080/",
    ],
)
def test_usable_origins_pass(origin: str) -> None:
    endpoint = {"endpoint_url": "http://127.0.0.1:9000"} if origin.startswith("s3") else {}
    assert load_settings(mounts={"m": {"origin": origin, **endpoint}}).mounts["m"].origin == origin


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[cache\n")
    (line,) = errors_of(config)
    assert line.startswith(f"config file {config}: ")


@pytest.mark.parametrize(
    ("size", "text"), [(16 * 2**20, "16MB"), (2**40, "1TB"), (1536, "1536 bytes"), (10, "10 bytes")]
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text

"""Settings: a TOML file plus ``TESSERA_<SECTION>__<KEY>`` environment variables.

Sizes are strings such as ``"512MB"`` or ``"1TB"`` and are parsed once, here. Like most infrastructure
tools (nginx, Docker, rclone) we read ``KB``/``MB``/``GB``/``TB`` as powers of 1024; ``KiB``… spellings are
accepted too and mean the same. Durations are strings such as ``"30s"``, ``"5m"``, ``"250ms"``.

Precedence, highest first: explicit overrides (CLI flags), environment variables, the TOML file,
the embedded defaults. The embedded defaults run with no other server: a local folder origin, the
cache in ``./var/cache``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int | float) -> int:
    """Parse ``"512MB"``, ``"1TB"``, ``"4MiB"`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _NUMBER_UNIT.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (try '512MB' or '1TB')")
        number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit in {value!r} (use B, KB, MB, GB or TB)")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(value: str | int | float) -> float:
    """Parse ``"30s"``, ``"5m"``, ``"250ms"``, ``"1h"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _NUMBER_UNIT.match(value)
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"not a duration: {value!r} (try '30s', '5m' or '250ms')")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Bearer token required by write endpoints; writes are refused while it is unset.
    token: str | None = None
    #: Largest number of bytes a single files-API request may stream.
    max_request_bytes: ByteSize = parse_size("64GB")
    #: Requests in progress at once; past it new requests get 503 at once (``/healthz`` always answers).
    max_requests: int = Field(1000, ge=1)
    #: Open client connections; past it the longest-idle ones are closed to make room (and the figure is
    #: kept below the process's open-file limit).
    max_connections: int = Field(10_000, ge=1)
    #: A connection is closed if it has not sent a complete request (headers and body) this long after
    #: it opened (or after the first byte of a later request on it).
    header_timeout: Seconds = Field(10.0, gt=0)
    #: An idle keep-alive connection is closed after this long.
    keepalive_timeout: Seconds = Field(5.0, gt=0)
    #: A connection whose client takes no response bytes for this long is dropped (a slow reader).
    send_timeout: Seconds = Field(60.0, gt=0)
    #: Show origins, recently read keys and pins in /api/v1/cache/stats without the token (default:
    #: only totals without it).
    public_stats: bool = False
    #: One log line per request, with the path as sent. Off behind a front that logs (nginx).
    access_log: bool = True


class CacheSettings(BaseModel):
    dir: Path = Path("./var/cache")
    disk_size: ByteSize = parse_size("10GB")
    memory_size: ByteSize = parse_size("256MB")
    metadata_ttl: Seconds = 60.0
    block_size: ByteSize = parse_size("1MB")
    #: Objects up to this size are fetched whole by their first read (one request).
    small_object_size: ByteSize = parse_size("2MB")
    #: Upper bound of the readahead window a sequential reader grows to.
    readahead: ByteSize = parse_size("16MB")
    #: Longest ranged GET one fill issues; longer runs are split so a stream pipelines.
    max_fill: ByteSize = parse_size("16MB")
    high_watermark: float = Field(0.95, gt=0, le=1)
    low_watermark: float = Field(0.85, gt=0, le=1)
    #: "none": a block is marked present once written (safe against process crashes);
    #: "always": fdatasync before marking (also safe against power loss, slower fills).
    fsync: Literal["none", "always"] = "none"
    #: How often dirty index entries are written to SQLite.
    index_flush_interval: Seconds = 1.0
    #: Eviction policy of the disk tier(s): "wtinylfu" (the default) or "s3fifo", both scan-resistant,
    #: or "lru" for comparison.
    policy: Literal["wtinylfu", "s3fifo", "lru"] = "wtinylfu"
    #: Store an object on the disk tier only from its Nth read (1: at once); keeps one-hit wonders off.
    admit_after: int = Field(1, ge=1, le=100)
    #: Eviction policy of the memory tier.
    memory_policy: Literal["wtinylfu", "s3fifo", "lru"] = "s3fifo"
    #: Byte budget of pinned objects, part of disk_size (default: a tenth of it).
    pin_size: ByteSize | None = None
    #: An optional second, slower disk tier (e.g. HDD behind an SSD): evictions from the first tier
    #: move there instead of being dropped, and a hit there moves the object back.
    second_dir: Path | None = None
    second_size: ByteSize = 0
    #: After a start, check the disk against the index in the background (punch out bytes a crash left
    #: unindexed, drop versions whose file vanished, remove unknown files).
    verify_on_start: bool = True
    #: How long a fill waits for the scavenger when the tier is full of objects in use, before the
    #: block is served without being cached.
    fill_wait: Seconds = 2.0

    @model_validator(mode="after")
    def _check(self) -> CacheSettings:
        if self.low_watermark > self.high_watermark:
            raise ValueError("cache.low_watermark must not exceed cache.high_watermark")
        if not 4096 <= self.block_size <= parse_size("64MB"):
            raise ValueError("cache.block_size must be between 4KB and 64MB")
        if self.pin_size is not None and self.pin_size > self.disk_size:
            raise ValueError("cache.pin_size must not exceed cache.disk_size")
        if self.second_dir is not None and self.second_size <= 0:
            raise ValueError("cache.second_dir needs cache.second_size")
        return self


class OriginSettings(BaseModel):
    """How origins are talked to: the same for every mount."""

    retries: int = Field(3, ge=0, le=20)
    backoff: Seconds = 0.1
    max_backoff: Seconds = 2.0
    connect_timeout: Seconds = 5.0
    #: Longest wait for the response headers or for the next piece of a body.
    read_timeout: Seconds = 30.0
    #: Requests in flight to all origins at once; further fills queue.
    max_concurrency: int = Field(64, ge=1, le=4096)


class FsSettings(BaseModel):
    """The FUSE view (``tessera mount``)."""

    #: How long a directory listing is reused before the origin is listed again.
    listing_ttl: Seconds = 60.0
    #: A read that takes longer fails with EIO instead of hanging the reader.
    read_deadline: Seconds = 60.0
    #: Upper bound on names per directory listing kept in memory (larger levels are truncated, logged).
    max_listing: int = Field(1_000_000, ge=1)


class ImagesSettings(BaseModel):
    """The IIIF image server."""

    #: Limits advertised in info.json and enforced on every request (None: no limit on that axis).
    max_width: int | None = Field(None, ge=1)
    max_height: int | None = Field(None, ge=1)
    max_area: int | None = Field(100_000_000, ge=1)
    #: Renders at once (each one libvips pipeline); further requests queue.
    render_concurrency: int = Field(2, ge=1, le=64)
    #: Requests allowed to wait for a render slot; past it, 503 at once.
    max_queue: int = Field(256, ge=0)
    #: Longest wait for a render slot plus the render itself, then 503.
    render_timeout: Seconds = 30.0
    jpeg_quality: int = Field(85, ge=1, le=100)
    #: Keep rendered responses in the cache tiers (keyed by the canonical request and source ETag).
    derivative_cache: bool = True
    #: A request that is exactly one stored JPEG tile of a tiled TIFF gets that tile's bytes as they
    #: are (no decode, no re-encode; the source's own JPEG quality). Off: every tile is re-encoded.
    tile_passthrough: bool = True
    #: Memory for decoded JPEG 2000 codestream tiles, so the viewer tiles inside one are cut from a
    #: single decode (0: decode every request's area on its own).
    decoded_cache: ByteSize = parse_size("256MB")
    #: JPEG 2000 sources up to this size are fetched whole (in the background) on first use, so that
    #: OpenJPEG can then read the local file directly; larger ones are always read block by block.
    jp2_whole_file_size: ByteSize = parse_size("512MB")
    #: Sizes (long edge, px) of the pre-generated thumbnails served under /thumbs/.
    thumbnail_sizes: list[int] = Field(default_factory=lambda: [100, 200, 400, 1024])


class MountSettings(BaseModel):
    """One named mount: ``/NAME/...`` in the virtual namespace."""

    origin: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: Path-style addressing (``endpoint/bucket/key``), needed by most S3-compatible servers.
    path_style: bool = True


def _default_mounts() -> dict[str, MountSettings]:
    return {"files": MountSettings(origin="file://./var/files")}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TESSERA_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    server: ServerSettings = ServerSettings()
    cache: CacheSettings = CacheSettings()
    origin: OriginSettings = OriginSettings()
    fs: FsSettings = FsSettings()
    images: ImagesSettings = ImagesSettings()
    mounts: dict[str, MountSettings] = Field(default_factory=_default_mounts)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML source reads ``model_config["toml_file"]``, which ``load_settings`` sets.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (or ``$TESSERA_CONFIG``), the environment and ``overrides``."""
    path = config_file or os.environ.get("TESSERA_CONFIG")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    loaded = _FileSettings(**overrides)
    return Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})

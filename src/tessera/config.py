"""Settings: a TOML file plus ``TESSERA_<SECTION>__<KEY>`` environment variables.

Sizes are strings such as ``"512MB"`` or ``"1TB"`` and are parsed once, here. Like most infrastructure
tools (nginx, Docker, rclone) we read ``KB``/``MB``/``GB``/``TB`` as powers of 1024; ``KiB``… spellings are
accepted too and mean the same. Durations are strings such as ``"30s"``, ``"5m"``, ``"250ms"``.

Precedence, highest first: explicit overrides (CLI flags), environment variables, the TOML file,
the embedded defaults. The embedded defaults run with no other server: a local folder origin, the
cache in ``./var/cache``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tessera.tokens import SCOPES, Scope, TokenHash, check_prefix
from tessera.web.base_url import normalise_public_url

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


def format_size(value: int) -> str:
    """``16777216`` -> ``"16MB"``: the largest unit that divides the size exactly, else bytes."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = _SIZE_UNITS[unit.lower()]
        if value >= scale and value % scale == 0:
            return f"{value // scale}{unit}"
    return f"{value} bytes"


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]

#: A disk tier must hold at least this many blocks; below it nothing useful stays cached.
MIN_DISK_BLOCKS = 16


def _disk_size_problem(size: int, block_size: int) -> str | None:
    """Why ``size`` cannot be a disk tier's size (None if it can).

    A unitless number is bytes; a tiny one was almost certainly meant in GB, so the message says so.
    """
    minimum = MIN_DISK_BLOCKS * block_size
    if size >= minimum:
        return None
    hint = f"; did you mean {size}GB?" if size < 1024 else ""
    return (
        f"{format_size(size)} is too small for a cache (at least {format_size(minimum)}: "
        f"{MIN_DISK_BLOCKS} blocks of cache.block_size){hint}"
    )


class ConfigError(ValueError):
    """Settings that cannot be used: one line per problem, each naming its key."""

    @classmethod
    def from_validation(cls, exc: ValidationError) -> ConfigError:
        return cls("\n".join(_describe(error) for error in exc.errors()))


class _Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Bearer token with every scope on every path (``[tokens.NAME]`` add scoped ones); while neither is
    #: set, writes and cache operations are refused.
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
    #: Base of every URL the server writes (IIIF ids, ``Location``, ``Link``), e.g.
    #: "https://images.example.org"; unset: the request's scheme and its ``Host`` header, if valid.
    public_url: Annotated[str, AfterValidator(normalise_public_url)] | None = None


class CacheSettings(_Section):
    dir: Path = Path("./var/cache")
    disk_size: ByteSize = parse_size("10GB")
    memory_size: ByteSize = parse_size("256MB")
    metadata_ttl: Seconds = 60.0
    #: Memory for the metadata (size, ETag) of recently asked objects; past it the least recently
    #: used are forgotten (a cached object's metadata is then read back from the index, others cost a
    #: HEAD). About 600 bytes per object with 40-character keys: 64 MB holds about 100,000 objects.
    metadata_size: ByteSize = parse_size("64MB")
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
        for key in ("disk_size", "second_size") if self.second_dir is not None else ("disk_size",):
            problem = _disk_size_problem(getattr(self, key), self.block_size)
            if problem:
                raise ValueError(f"cache.{key}: {problem}")
        return self


class OriginSettings(_Section):
    """How origins are talked to: the same for every mount."""

    retries: int = Field(3, ge=0, le=20)
    backoff: Seconds = 0.1
    max_backoff: Seconds = 2.0
    connect_timeout: Seconds = 5.0
    #: Longest wait for the response headers or for the next piece of a body.
    read_timeout: Seconds = 30.0
    #: Requests in flight to all origins at once; further fills queue.
    max_concurrency: int = Field(64, ge=1, le=4096)


class FsSettings(_Section):
    """The FUSE view (``tessera mount``)."""

    #: How long a directory listing is reused before the origin is listed again.
    listing_ttl: Seconds = 60.0
    #: A read that takes longer fails with EIO instead of hanging the reader.
    read_deadline: Seconds = 60.0
    #: Upper bound on names per directory listing kept in memory (larger levels are truncated, logged).
    max_listing: int = Field(1_000_000, ge=1)
    #: Estimated bytes of the directory listings kept (least recently used dropped first; a listing
    #: larger than this is served but not kept). About 400 bytes a name: 128MB keeps ~300k names.
    #: The inode table shares it: up to half of it (about 175 bytes an inode: 128MB, ~380k inodes),
    #: past which the kernel is asked to drop the names not used for longest; the listings get the rest.
    listing_cache_size: ByteSize = parse_size("128MB")
    #: Serve the mount's Prometheus metrics on http://server.host:PORT/metrics (unset: not served).
    metrics_port: int | None = Field(None, ge=1, le=65535)


class StorageSettings(_Section):
    """The write side: uploads, ingest and bulk import."""

    #: Largest object an upload (PUT, tus, ingest, import) may store; larger ones get 413.
    max_upload_size: ByteSize = parse_size("100GB")
    #: Sources ingest and bulk import may copy from: URL prefixes ("https://data.example.org/") and
    #: local roots ("file:///srv/incoming/"). Empty: none. Private and loopback addresses are refused
    #: unless an entry names them explicitly.
    ingest_allow: list[str] = Field(default_factory=list)
    #: Part size of S3 multipart uploads (the body is streamed through in parts of this size).
    part_size: ByteSize = parse_size("8MB")
    #: Parts of one upload sent to S3 at once (memory held: about part_size x this).
    upload_concurrency: int = Field(4, ge=1, le=64)
    #: Staging folder of unfinished tus uploads on this node (unset: ``cache.dir/uploads``).
    uploads_dir: Path | None = None
    #: Bytes that unfinished tus uploads may reserve at once (their announced lengths); past it a new
    #: upload gets 507.
    staging_size: ByteSize = parse_size("20GB")
    #: An unfinished tus upload that receives no bytes for this long is removed.
    upload_expiry: Seconds = Field(24 * 3600.0, gt=0)


class JobsSettings(_Section):
    """Durable background jobs (bulk import; image processing next)."""

    #: Where jobs live: "sqlite:///path/jobs.db" (default: ``jobs.sqlite`` under ``cache.dir``; no
    #: server needed) or "postgresql://user@host:port/db" (Procrastinate, for several nodes).
    database_url: str | None = None
    #: Jobs this server runs at once.
    workers: int = Field(2, ge=1, le=64)
    #: Files one job copies at once.
    concurrency: int = Field(8, ge=1, le=256)
    #: A running job's worker renews its lease every third of this; a job whose lease ran out (its
    #: worker died) is taken again by another worker and resumes where its progress says.
    lease: Seconds = Field(30.0, ge=1.0)
    #: Jobs that ended (done, failed, cancelled) are deleted this long after (checked hourly): a busy
    #: image host queues one job per upload, 500k a day.
    keep_finished: Seconds = Field(7 * 86400.0, ge=3600.0)

    @model_validator(mode="after")
    def _check(self) -> JobsSettings:
        url = self.database_url
        if url is not None and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"jobs.database_url {url!r} is neither sqlite:///PATH nor postgresql://…")
        return self


class ImagesSettings(_Section):
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


_FORMATS: tuple[Literal["jpeg", "webp", "avif"], ...] = ("jpeg", "webp", "avif")


class HostingSettings(_Section):
    """Image hosting: validated uploads, resized derivatives, short unguessable links (``/i/{link}``)."""

    #: The mount that stores originals and derivatives (under ``{link}/``). Keep it ``public = false``:
    #: its listing would enumerate every link. Hosting is off when no mount has this name.
    mount: str = "hosted"
    #: The link map: ``sqlite:///path`` (default ``./var/hosting.sqlite``, beside the data, not in the
    #: cache) or ``postgresql://user@host:port/db`` (several processes or nodes; the ``postgres`` extra).
    database_url: str = "sqlite:///./var/hosting.sqlite"
    #: Derivative widths (px); an image narrower than a width is never upscaled (its own width is used).
    widths: list[int] = Field(default_factory=lambda: [1024, 800, 500], min_length=1)
    #: The width ``/i/{link}`` serves; must be one of ``widths`` (default: the first).
    default_width: int | None = None
    #: Derivative formats: "jpeg", "webp", "avif" (dropped with a warning when libvips cannot encode it).
    formats: list[Literal["jpeg", "webp", "avif"]] = Field(
        default_factory=lambda: list(_FORMATS), min_length=1
    )
    #: Formats the processing job makes at once; the others are made on their first view.
    eager_formats: list[Literal["jpeg", "webp", "avif"]] = Field(default_factory=lambda: list(_FORMATS[:2]))
    max_upload_size: ByteSize = parse_size("40MB")
    #: Limits read from the image header before anything is decoded.
    max_pixels: int = Field(50_000_000, ge=1)
    max_width: int = Field(16_384, ge=1)
    max_height: int = Field(16_384, ge=1)
    max_frames: int = Field(100, ge=1)
    #: Uploads without a token (then limited per client address by ``uploads_per_minute``).
    anonymous_uploads: bool = False
    uploads_per_minute: int = Field(30, ge=1)
    #: Uploads validated and decoded at once; further ones wait (bounded memory: each holds its body).
    processing_concurrency: int = Field(2, ge=1, le=64)
    #: Worker processes (at low CPU priority) that make the eager formats beyond JPEG.
    job_processes: int = Field(1, ge=1, le=64)

    jpeg_quality: int = Field(82, ge=1, le=100)
    webp_quality: int = Field(80, ge=1, le=100)
    avif_quality: int = Field(50, ge=1, le=100)
    #: Keep the copyright field of the metadata in derivatives (everything else, GPS included, goes).
    keep_copyright: bool = False
    #: Secret key of the link permutation (hex, at least 32 digits). Unset: one is made at the first
    #: start and kept in the database, so every node sharing it gives the same links.
    link_key: str | None = None
    #: Characters of a link (base62): 62**8 = 2.2e14 possible links, so a guess hits an existing one
    #: with odds of (links made) / 2.2e14.
    link_length: int = Field(8, ge=6, le=10)
    #: Link numbers leased from the database at a time by each process.
    link_block: int = Field(1000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _check(self) -> HostingSettings:
        url = self.database_url
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"hosting.database_url {url!r} is neither sqlite:///PATH nor postgresql://…")
        if self.default_width is not None and self.default_width not in self.widths:
            raise ValueError(f"hosting.default_width {self.default_width} is not one of {self.widths}")
        if any(width < 1 or width > 16_384 for width in self.widths):
            raise ValueError("hosting.widths must be from 1 to 16384")
        if self.link_key is not None and not re.fullmatch(r"[0-9a-fA-F]{32,}", self.link_key):
            raise ValueError("hosting.link_key must be at least 32 hex digits (openssl rand -hex 32)")
        return self

    @property
    def served_width(self) -> int:
        return self.default_width if self.default_width is not None else self.widths[0]


class ClusterSettings(_Section):
    """Several nodes acting as one cache (``docs/scale-out.md``): every node runs the same config.

    A front (``tessera front-config``, nginx) sends each object to one home node by consistent hash
    over ``nodes``; what the nodes must share lives in existing engines: Redis (``redis_url``: the
    invalidation stream, rate limits, admission counts) and PostgreSQL (``database_url``: the hosting
    link map and the job queue, unless ``hosting.database_url`` / ``jobs.database_url`` are set).
    """

    #: The nodes' ``HOST:PORT`` as the front reaches them, the same list in the same order on every
    #: node (the front hashes over it). Empty: a single node (or one node of ``--workers`` shards).
    nodes: CommaList = Field(default_factory=list)
    #: ``redis://host:port/db``: needed when ``nodes`` names more than one node.
    redis_url: str | None = None
    #: ``postgresql://user@host:port/db``: the link map and job queue of every node; needed when
    #: ``nodes`` names more than one node and hosting or jobs have no PostgreSQL URL of their own.
    database_url: str | None = None
    #: The front stops sending to a node this long after a request to it failed (nginx
    #: ``fail_timeout``), then tries it again.
    fail_timeout: Seconds = Field(5.0, gt=0)
    #: Invalidations kept in the Redis stream for a node that was away; one that was away longer than
    #: the stream reaches back revalidates every object it holds on return.
    stream_length: int = Field(100_000, ge=1_000)

    @model_validator(mode="after")
    def _check(self) -> ClusterSettings:
        for node in self.nodes:
            if not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):\d{1,5}", node):
                raise ValueError(f"cluster.nodes: {node!r} is not HOST:PORT")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("cluster.nodes lists a node twice")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"cluster.redis_url {self.redis_url!r} is not redis://HOST:PORT/DB")
        url = self.database_url
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"cluster.database_url {url!r} is not postgresql://…")
        if len(self.nodes) > 1 and self.redis_url is None:
            raise ValueError("cluster.nodes names several nodes: cluster.redis_url is needed")
        return self

    @property
    def enabled(self) -> bool:
        """Several nodes share the work (invalidations go through Redis)."""
        return len(self.nodes) > 1


_ORIGIN_FORMS = "use s3://bucket/prefix, file:///folder, a folder, or http(s)://host/base/"


def check_origin(url: str) -> str:
    """Refuse an origin URL no origin can be built from, saying what is wrong with it."""
    if not url.strip():
        raise ValueError(f"empty origin ({_ORIGIN_FORMS})")
    parts = _split_url(url)
    scheme = parts.scheme.lower()
    if scheme == "s3" and not parts.netloc:
        raise ValueError(f"origin {url!r} names no bucket")
    if scheme in ("http", "https"):
        _check_host(url, parts)
    elif scheme not in ("s3", "file", ""):  # no scheme: a local folder
        raise ValueError(f"unsupported origin {url!r} ({_ORIGIN_FORMS})")
    return url


def check_endpoint(url: str) -> str:
    """An S3 endpoint is an ``http(s)://host[:port]`` URL."""
    parts = _split_url(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"endpoint {url!r} is not an http:// or https:// URL")
    _check_host(url, parts)
    return url


def _split_url(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    return parts


def _check_host(url: str, parts: SplitResult) -> None:
    if not re.fullmatch(r"[\w.-]+|[0-9A-Fa-f:.]+", parts.hostname or ""):
        raise ValueError(f"{url!r} names no valid host")


class MountSettings(_Section):
    """One named mount: ``/NAME/...`` in the virtual namespace."""

    origin: Annotated[str, AfterValidator(check_origin)]
    endpoint_url: Annotated[str, AfterValidator(check_endpoint)] | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: Path-style addressing (``endpoint/bucket/key``), needed by most S3-compatible servers.
    path_style: bool = True
    #: S3 uploads carry their SHA-256 (``x-amz-checksum-sha256``), which the store checks; false for an
    #: S3-compatible server that refuses checksum headers.
    upload_checksums: bool = True
    #: Reads need no token (false: a token with the ``read`` scope is needed to read this mount).
    public: bool = True


def _comma_list(value: Any) -> Any:
    """A list from an environment variable: JSON (``'["read", "write"]'``) or ``"read,write"``."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: A list key that an environment variable may also give as ``a,b`` (``NoDecode``: pydantic-settings
#: would otherwise insist on JSON).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]


def _check_hash(value: str) -> str:
    return str(TokenHash.parse(value))


def _check_prefixes(prefixes: list[str] | None) -> list[str] | None:
    return None if prefixes is None else [check_prefix(prefix) for prefix in prefixes]


def _check_scopes(scopes: list[Scope]) -> list[Scope]:
    if not scopes:
        raise ValueError(f"a token needs at least one scope ({', '.join(SCOPES)})")
    return sorted(set(scopes), key=SCOPES.index)


class TokenSettings(_Section):
    """One scoped bearer token, ``[tokens.NAME]`` (``tessera token new NAME`` prints the section)."""

    #: ``sha256:<id>:<salt>:<digest>`` of the token; the config never holds the token itself.
    hash: Annotated[str, AfterValidator(_check_hash)]
    #: What the token may do: "read" (mounts with ``public = false``), "write" (uploads, deletes,
    #: ingest, imports), "admin" (cache operations, stats details). None implies another.
    scopes: Annotated[list[Scope], NoDecode, BeforeValidator(_comma_list), AfterValidator(_check_scopes)]
    #: Virtual paths the token may touch (each one itself and what is under it); unset: every path.
    prefixes: Annotated[CommaList | None, NoDecode, AfterValidator(_check_prefixes)] = None


def _default_mounts() -> dict[str, MountSettings]:
    return {
        "files": MountSettings(origin="file://./var/files"),
        # Hosted images: private, since a listing would enumerate the links (``[hosting] mount``).
        "hosted": MountSettings(origin="file://./var/hosted", public=False),
    }


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
    storage: StorageSettings = StorageSettings()
    jobs: JobsSettings = JobsSettings()
    hosting: HostingSettings = HostingSettings()
    cluster: ClusterSettings = ClusterSettings()
    mounts: dict[str, MountSettings] = Field(default_factory=_default_mounts)
    tokens: dict[str, TokenSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_token_ids(self) -> Settings:
        seen: dict[str, str] = {}
        for name, token in self.tokens.items():
            token_id = TokenHash.parse(token.hash).token_id
            if token_id in seen:
                raise ValueError(
                    f"tokens.{name}: same token id as tokens.{seen[token_id]} (make a new token)"
                )
            seen[token_id] = name
        return self

    @model_validator(mode="after")
    def _cluster_databases(self) -> Settings:
        """``cluster.database_url`` is every node's link map and job queue unless those name their own;
        several nodes cannot share SQLite files."""
        shared = self.cluster.database_url
        if shared is not None:
            if "database_url" not in self.hosting.model_fields_set:
                self.hosting = self.hosting.model_copy(update={"database_url": shared})
            if self.jobs.database_url is None:
                self.jobs = self.jobs.model_copy(update={"database_url": shared})
        if self.cluster.enabled:
            for key, url in (("hosting", self.hosting.database_url), ("jobs", self.jobs.database_url)):
                if url is None or url.startswith("sqlite"):
                    raise ValueError(
                        f"cluster.nodes names several nodes: {key} needs PostgreSQL "
                        f"(cluster.database_url or {key}.database_url)"
                    )
        return self

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

    _check_environment()
    try:
        loaded = _FileSettings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from None
    return Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})


def _describe(error: Mapping[str, Any]) -> str:
    """One line for one validation error, naming the key as written in the TOML file."""
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc)
    variable = _env_name(loc)
    if error["type"] == "extra_forbidden":
        near = difflib.get_close_matches(loc[-1].lower(), _known_keys(loc[:-1]), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"unknown key {key}{hint}" + (f" in {variable}" if variable else "")
    message = error["msg"].removeprefix("Value error, ")
    if not key or message.startswith(f"{key}."):  # a section-level check names its key itself
        return message
    return f"{key}" + (f" ({variable})" if variable else "") + f": {message}"


#: Sections made of named entries (``[mounts.NAME]``, ``[tokens.NAME]``) and the model of one entry.
_NAMED_SECTIONS: dict[str, type[BaseModel]] = {"mounts": MountSettings, "tokens": TokenSettings}


def _known_keys(section: tuple[str, ...]) -> list[str]:
    """The keys allowed at ``section`` (``()``: the top level; ``("mounts", NAME)``: one mount)."""
    if not section:
        return list(Settings.model_fields)
    if section[0] in _NAMED_SECTIONS:
        return list(_NAMED_SECTIONS[section[0]].model_fields) if len(section) == 2 else []
    field = Settings.model_fields.get(section[0])
    model = field.annotation if field is not None and len(section) == 1 else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _env_name(loc: tuple[str, ...]) -> str | None:
    """The environment variable that set the key at ``loc``, if one did."""
    wanted = "TESSERA_" + "__".join(loc).upper()
    return next((name for name in os.environ if name.upper() == wanted), None)


#: ``TESSERA_*`` variables that are not settings: the config file, and the bearer token a client command
#: sends (``tessera put`` … ``--token``), which a server on the same shell must not refuse to start over.
_NOT_SETTINGS = frozenset({"TESSERA_CONFIG", "TESSERA_TOKEN", "TESSERA_SERVER_URL"})


def _check_environment() -> None:
    """``TESSERA_*`` variables must name a section (``TESSERA_<SECTION>__<KEY>``) or be one of
    ``_NOT_SETTINGS``.

    pydantic-settings ignores variables that match no field, so ``TESSERA_CACHEE__DISK_SIZE`` (or a
    single underscore) would otherwise be dropped without a word.
    """
    problems = []
    for name in os.environ:
        if not name.upper().startswith("TESSERA_") or name.upper() in _NOT_SETTINGS:
            continue
        rest = name[len("TESSERA_") :].lower()
        section, nested, key = rest.partition("__")
        if section in Settings.model_fields:
            continue
        if not nested:  # TESSERA_CACHE_DISK_SIZE: one underscore where two were meant
            section, _, key = rest.partition("_")
        near = difflib.get_close_matches(section, list(Settings.model_fields), n=1)
        hint = f" (did you mean TESSERA_{near[0].upper()}__{key.upper() or '<KEY>'}?)" if near else ""
        problems.append(
            f"unknown environment variable {name}{hint}: use TESSERA_<SECTION>__<KEY>, "
            f"SECTION one of {', '.join(Settings.model_fields)}"
        )
    if problems:
        raise ConfigError("\n".join(problems))

"""Prometheus metrics. Each engine owns a registry, so two engines in one process never mix figures."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Buckets of ``tessera_origin_request_seconds``: from a local folder's fraction of a millisecond to a
#: stalled store's tens of seconds (the percentiles of ``/api/v1/stats`` are read from them).
ORIGIN_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The counters and gauges the engine updates; names are part of the external contract."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.origin_requests = Counter(
            "tessera_origin_requests", "Requests sent to origins", ["origin", "method"], registry=r
        )
        self.origin_bytes = Counter(
            "tessera_origin_bytes", "Body bytes received from origins", ["origin"], registry=r
        )
        self.origin_seconds = Histogram(
            "tessera_origin_request_seconds",
            "Time from sending an origin request to its answer (response headers; a HEAD or listing "
            "page whole), failed attempts included",
            ["origin", "method"],
            buckets=ORIGIN_SECONDS_BUCKETS,
            registry=r,
        )
        self.origin_errors = Counter(
            "tessera_origin_errors", "Failed origin requests (before retry)", ["origin", "kind"], registry=r
        )
        self.hits = Counter(
            "tessera_cache_hits", "Block reads served from a cache tier", ["tier"], registry=r
        )
        self.misses = Counter(
            "tessera_cache_misses", "Block reads that needed the origin", ["tier"], registry=r
        )
        self.coalesced = Counter(
            "tessera_cache_coalesced", "Block reads that joined a fill already in flight", registry=r
        )
        self.bypassed = Counter(
            "tessera_cache_bypassed_bytes",
            "Bytes served from the origin without caching (disk full)",
            registry=r,
        )
        self.corrupt_blocks = Counter(
            "tessera_cache_corrupt_blocks",
            "Cached blocks that failed their checksum after a restart and were fetched again",
            registry=r,
        )
        self.evictions = Counter("tessera_cache_evictions", "Evicted entries", ["tier"], registry=r)
        self.cache_bytes = Gauge("tessera_cache_bytes", "Bytes held per tier", ["tier"], registry=r)
        self.cache_limit = Gauge("tessera_cache_limit_bytes", "Byte limit per tier", ["tier"], registry=r)
        self.cache_objects = Gauge("tessera_cache_objects", "Object versions with blocks on disk", registry=r)
        self.metadata_bytes = Gauge(
            "tessera_metadata_bytes",
            "Bytes held by object metadata in memory (bounded by cache.metadata_size)",
            registry=r,
        )
        self.metadata_entries = Gauge(
            "tessera_metadata_entries", "Objects whose metadata is held in memory", registry=r
        )
        self.listing_cache_bytes = Gauge(
            "tessera_listing_cache_bytes",
            "Estimated bytes of the directory listings the FUSE mount keeps (within fs.listing_cache_size)",
            registry=r,
        )
        self.fs_inodes = Gauge("tessera_fs_inodes", "Inodes the FUSE mount holds for the kernel", registry=r)
        self.fs_inode_bytes = Gauge(
            "tessera_fs_inode_bytes",
            "Estimated bytes of the FUSE inode table (up to half of fs.listing_cache_size)",
            registry=r,
        )
        self.fs_inode_invalidations = Counter(
            "tessera_fs_inode_invalidations",
            "Names the FUSE mount asked the kernel to drop (its inode table over budget)",
            registry=r,
        )
        self.listing_cache_entries = Gauge(
            "tessera_listing_cache_entries", "Directory listings the FUSE mount keeps", registry=r
        )
        self.block_reads = Counter(
            "tessera_origin_block_reads",
            "Block reads of an origin's objects, by whether a cache tier served them (hit) or not (miss)",
            ["origin", "result"],
            registry=r,
        )
        #: Origin identity -> its metrics label (the mount's name); set by the engine.
        self.origin_names: dict[str, str] = {}
        self._block_reads: dict[tuple[str, bool], Any] = {}
        # Children bound once: ``labels()`` costs a dictionary lookup under a lock on every hit otherwise.
        self.memory_hits = self.hits.labels("memory")
        self.disk_hits = self.hits.labels("disk")
        self.disk_misses = self.misses.labels("disk")
        self.image_responses = Counter(
            "tessera_iiif_responses",
            "IIIF image responses by how they were made: stored (a stored tile as is), derivative (from "
            "the cache), crop (part of one stored tile), tiles (stored tiles joined), openjpeg, libvips",
            ["path"],
            registry=r,
        )
        self.fill_seconds = Histogram(
            "tessera_fill_seconds",
            "Time from a fill's request to its last block",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.jobs = Counter(
            "tessera_jobs",
            "Background jobs by kind and state (queued, done, failed, cancelled)",
            ["kind", "state"],
            registry=r,
        )
        self.import_files = Counter(
            "tessera_import_files",
            "Files handled by bulk import and ingest: copied, skipped (already copied), failed",
            ["result"],
            registry=r,
        )
        self.import_bytes = Counter(
            "tessera_import_bytes", "Bytes copied by bulk import and ingest", registry=r
        )
        self.hosting_uploads = Counter(
            "tessera_hosting_uploads",
            "Image uploads by result: stored, duplicate, or the refusal's status (413, 415, 422, 429)",
            ["result"],
            registry=r,
        )
        self.hosting_renders = Counter(
            "tessera_hosting_renders",
            "Derivatives rendered, by format and when: upload, job, or view (on demand)",
            ["format", "when"],
            registry=r,
        )
        self.hosting_views = Counter(
            "tessera_hosting_views",
            "Views of hosted images by what was asked: default, derivative, original; and 404/410",
            ["kind"],
            registry=r,
        )

    def block_read(self, origin: str, hit: bool) -> None:
        """Count a block read of an object of the origin with identity ``origin`` (per-mount hit ratio)."""
        child = self._block_reads.get((origin, hit))
        if child is None:
            name = self.origin_names.get(origin, origin)
            child = self._block_reads[(origin, hit)] = self.block_reads.labels(name, "hit" if hit else "miss")
        child.inc()

"""``GET /api/v1/stats``: the node's figures per mount and per tier, for monitoring.

Per tier and for the pins: bytes, capacity, usage and objects (the engine's figures). Per mount: what
its origin was asked and how fast it answered, from the metrics (``tessera_origin_*``, latency
percentiles read from the ``tessera_origin_request_seconds`` histogram the way Prometheus'
``histogram_quantile`` does). The hit ratio is the engine's, over all mounts: block reads served
from a tier over all block reads. What names an origin (bucket, folder, URL) is shown only with an
``admin`` token for every path or ``server.public_stats``, as in ``/api/v1/cache/stats``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from tessera.web.auth import BearerCredentials, token_given

router = APIRouter(prefix="/api/v1", tags=["ops"])

PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


class Latency(BaseModel):
    requests: int = Field(description="Origin requests timed (failed attempts included).")
    p50: float | None = Field(description="Seconds; None before the first request.")
    p95: float | None
    p99: float | None


class MountStats(BaseModel):
    origin: str | None = Field(None, description="The origin (admin token or server.public_stats only).")
    origin_requests: dict[str, int] = Field(description="Requests sent to the origin, by method.")
    origin_bytes: int = Field(description="Body bytes received from the origin.")
    origin_errors: int = Field(description="Failed origin requests (before retry).")
    origin_latency: Latency
    cached_objects: int = Field(description="Object versions of this mount's origin on disk.")
    cached_bytes: int = Field(description="Their bytes on disk (both figures refreshed every 30 s).")
    block_reads: int = Field(description="Block reads of this mount's objects.")
    hit_ratio: float | None = Field(
        description="Share of those reads served by a cache tier (None before the first read)."
    )


class TierStats(BaseModel):
    bytes: int
    capacity: int
    usage_percent: float
    objects: int | None = Field(
        description="Object versions held (None where not counted: memory holds blocks)."
    )


class Stats(BaseModel):
    mounts: dict[str, MountStats]
    tiers: dict[str, TierStats]
    pinned: TierStats = Field(description="Pinned objects, within cache.pin_size (part of the disk tier).")
    pins: int = Field(description="Pins (objects or prefixes), retrieve leases' included.")
    hit_ratio: float | None = Field(description="Block reads served from a cache tier, over all block reads.")


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a histogram given as ``(upper bound, cumulative count)`` in ascending order
    (the last bound ``+Inf``), interpolated linearly inside its bucket; the highest finite bound if it
    falls in the ``+Inf`` bucket; None for an empty histogram."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _origin_figures(registry: CollectorRegistry, mounts: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per mount (an origin's metrics label is its mount's name): requests by method, bytes, errors,
    the latency histogram's buckets summed over methods, and block reads by hit or miss."""
    figures: dict[str, dict[str, Any]] = {
        m: {
            "requests": defaultdict(int),
            "bytes": 0,
            "errors": 0,
            "buckets": defaultdict(float),
            "reads": {"hit": 0, "miss": 0},
        }
        for m in mounts
    }
    for metric in registry.collect():
        for sample in metric.samples:
            mount = figures.get(sample.labels.get("origin", ""))
            if mount is None:
                continue
            if sample.name == "tessera_origin_requests_total":
                mount["requests"][sample.labels["method"]] += int(sample.value)
            elif sample.name == "tessera_origin_bytes_total":
                mount["bytes"] += int(sample.value)
            elif sample.name == "tessera_origin_errors_total":
                mount["errors"] += int(sample.value)
            elif sample.name == "tessera_origin_block_reads_total":
                mount["reads"][sample.labels["result"]] += int(sample.value)
            elif sample.name == "tessera_origin_request_seconds_bucket":
                mount["buckets"][float(sample.labels["le"])] += sample.value
    return figures


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _latency(buckets: dict[float, float]) -> Latency:
    ordered = sorted(buckets.items())
    values = {name: quantile(ordered, q) for name, q in PERCENTILES.items()}
    return Latency(requests=int(ordered[-1][1]) if ordered else 0, **values)


def _tier(used: int, limit: int, objects: int | None) -> TierStats:
    percent = round(100 * used / limit, 2) if limit else 0.0
    return TierStats(bytes=used, capacity=limit, usage_percent=percent, objects=objects)


@router.get("/stats", response_model=Stats)
async def stats(request: Request, _credentials: BearerCredentials) -> Stats:
    """Per mount: origin requests, bytes, errors and latency percentiles (p50/p95/p99); per tier and for
    the pins: bytes, capacity, usage % and objects; the hit ratio of block reads."""
    engine = request.app.state.engine
    figures = await engine.stats(top=0)
    usage = await engine.usage_by_origin()
    details = request.app.state.settings.server.public_stats or token_given(request, scope="admin")
    namespace = engine.namespace
    mounts = {
        name: MountStats(
            origin=namespace.origin(name).identity if details else None,
            origin_requests=dict(mount["requests"]),
            origin_bytes=mount["bytes"],
            origin_errors=mount["errors"],
            origin_latency=_latency(mount["buckets"]),
            cached_objects=usage.get(namespace.origin(name).identity, (0, 0))[0],
            cached_bytes=usage.get(namespace.origin(name).identity, (0, 0))[1],
            block_reads=sum(mount["reads"].values()),
            hit_ratio=_ratio(mount["reads"]["hit"], sum(mount["reads"].values())),
        )
        for name, mount in _origin_figures(engine.metrics.registry, namespace.mounts).items()
    }
    tiers = {
        name: _tier(tier["bytes"], tier["limit"], tier.get("objects"))
        for name, tier in figures["tiers"].items()
    }
    pinned = figures["pinned"]
    hits = sum(figures["hits"].values())
    reads = hits + figures["misses"]
    return Stats(
        mounts=mounts,
        tiers=tiers,
        pinned=_tier(pinned["bytes"], pinned["limit"], None),
        pins=len(pinned["pins"]),
        hit_ratio=_ratio(hits, reads),
    )

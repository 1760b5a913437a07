"""The cluster's Prometheus metrics, registered in the engine's registry (so ``/metrics`` shows them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.publish_errors = Counter(
            "tessera_cluster_publish_errors",
            "Failed attempts to send changes to the Redis stream (the changes are kept and sent again)",
            registry=r,
        )
        self.backlog = Gauge(
            "tessera_cluster_publish_backlog", "Changes waiting to be sent to the Redis stream", registry=r
        )
        self.applied = Counter(
            "tessera_cluster_invalidations_applied",
            "Changes made through other nodes applied here",
            ["kind"],
            registry=r,
        )
        self.lag = Gauge(
            "tessera_cluster_invalidation_lag_seconds",
            "Age of the last change applied here when it was applied (Redis' clock against this node's)",
            registry=r,
        )
        self.revalidations = Counter(
            "tessera_cluster_revalidations",
            "Times this node revalidated every object (changes lost: stream trimmed past its position, "
            "Redis lost its data, or no position saved)",
            registry=r,
        )
        self.redis_errors = Counter(
            "tessera_cluster_redis_errors",
            "Redis calls that failed, by use (stream, rate_limit, admission)",
            ["use"],
            registry=r,
        )

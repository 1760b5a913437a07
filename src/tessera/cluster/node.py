"""This node's part in a cluster: ``open_cluster`` gives a ``SoloNode`` (nothing shared) unless
``[cluster]`` names several nodes, then a ``ClusterNode`` (``member.py``: Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.cluster.changes import Announcer
from tessera.cluster.rate_limit import LocalRate, UploadRate
from tessera.config import Settings
from tessera.metrics import Metrics

if TYPE_CHECKING:
    from tessera.cache import CacheEngine
    from tessera.cache.engine import SharedAdmission
    from tessera.hosting.service import HostingService


class SoloNode(Announcer):
    """A node on its own: changes need telling nobody, limits and counts are this process'."""

    #: The engine's shared admission counts (none: the local ones only).
    admission: SharedAdmission | None = None

    def upload_rate(self, per_minute: int) -> UploadRate:
        return LocalRate(per_minute)

    async def start(self, engine: CacheEngine, hosting: HostingService | None) -> None:
        """Start sharing (after the engine and the hosting service are open)."""

    async def close(self) -> None:
        """Stop sharing (before the engine closes)."""


def open_cluster(settings: Settings, metrics: Metrics) -> SoloNode:
    if not settings.cluster.enabled:
        return SoloNode()
    try:
        from tessera.cluster.member import ClusterNode
    except ImportError as error:
        raise RuntimeError(
            f"[cluster] names several nodes but Redis' client is missing ({error}): "
            "install it with pip install 'tessera[cluster]'"
        ) from error
    return ClusterNode(settings, metrics)

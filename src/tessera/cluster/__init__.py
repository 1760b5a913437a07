"""Several nodes acting as one cache: what they share through Redis (``docs/scale-out.md``).

Only ``changes`` and ``node`` are imported here; the Redis parts load when a cluster is configured.
"""

from tessera.cluster.changes import SOLO, Announcer, Change
from tessera.cluster.node import SoloNode, open_cluster

__all__ = ["SOLO", "Announcer", "Change", "SoloNode", "open_cluster"]

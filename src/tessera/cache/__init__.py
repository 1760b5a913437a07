"""The tiered cache engine: memory and disk tiers over origins, with single-flight block fills.

Consumers use only what is exported here: ``CacheEngine`` (its public methods), the ``Handle`` that
``CacheEngine.open`` returns, and ``CachedFile`` for blocking code. The other modules are the engine's
parts.
"""

from tessera.cache.cached_file import CachedFile
from tessera.cache.engine import CacheEngine
from tessera.cache.handle import Handle

__all__ = ["CacheEngine", "CachedFile", "Handle"]

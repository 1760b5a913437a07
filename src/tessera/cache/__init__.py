"""The tiered cache engine: memory and disk tiers over origins, with single-flight block fills."""

from tessera.cache.engine import CacheEngine, Handle

__all__ = ["CacheEngine", "Handle"]

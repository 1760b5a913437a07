"""Origins: where objects really live. One async interface, one implementation per store family."""

from tessera.origins.base import ObjectInfo, Origin, RangeBody
from tessera.origins.objectstore import ObjectStoreOrigin, open_origin, warn_about_missing_buckets

__all__ = [
    "ObjectInfo",
    "ObjectStoreOrigin",
    "Origin",
    "RangeBody",
    "open_origin",
    "warn_about_missing_buckets",
]

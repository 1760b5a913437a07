"""The write side: storing, deleting and listing objects of any mount, for the files API, tus uploads,
ingest and bulk import alike."""

from tessera.storage.checksums import Expected
from tessera.storage.manager import StorageManager, Stored

__all__ = ["Expected", "StorageManager", "Stored"]

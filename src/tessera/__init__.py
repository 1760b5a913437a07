"""Tessera: serve huge, long-tailed collections in object storage as if they were on a fast local disk."""

__version__ = "0.1.0"

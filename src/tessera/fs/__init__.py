"""The read-only filesystem view (FUSE) of one mount, reading through the cache engine."""

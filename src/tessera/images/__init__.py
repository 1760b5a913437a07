"""IIIF Image API (3.0 and 2.1, compliance level 2): request parsing, resolution and canonical URIs."""

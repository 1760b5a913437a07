"""Tessera tests."""

"""Talking to a running Tessera server over HTTP: the client behind ``tessera put/get/ls/rm/import/
retrieve`` and scripts that want the same."""

from tessera.remote.client import RemoteClient, RemoteError

__all__ = ["RemoteClient", "RemoteError"]
